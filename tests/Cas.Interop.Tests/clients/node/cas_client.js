#!/usr/bin/env node
// A cas.v1 client built on npm's @grpc/grpc-js + @grpc/proto-loader, for tests/Cas.Interop.Tests.
//
// The .proto files are loaded at start (protos/cas/v1 and grpc-proto's health and reflection protos). One scenario per
// run; it prints one JSON object on stdout with what it saw (responses, statuses, the order of stream events), and the
// C# test asserts on it. The client checks nothing itself: it only reports.
//
//   node cas_client.js --target 127.0.0.1:PORT --key KEY --protos REPO/protos --grpc-protos /usr/share/grpc-proto \
//       --args JSON SCENARIO
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const descriptor = require('protobufjs/ext/descriptor');

const RPC_TIMEOUT_MS = 30000; // every call has a deadline so that nothing here waits forever

function parseArgs(argv) {
  const o = { grpcProtos: '/usr/share/grpc-proto', args: '{}' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--target') o.target = argv[++i];
    else if (a === '--key') o.key = argv[++i];
    else if (a === '--protos') o.protos = argv[++i];
    else if (a === '--grpc-protos') o.grpcProtos = argv[++i];
    else if (a === '--args') o.args = argv[++i];
    else o.scenario = a;
  }
  if (!o.target || !o.key || !o.protos || !o.scenario) throw new Error('usage: cas_client.js --target T --key K --protos DIR [--args JSON] SCENARIO');
  o.args = JSON.parse(o.args);
  return o;
}

const statusName = code => Object.keys(grpc.status).find(k => grpc.status[k] === code) || String(code);
const refusal = e => ({ code: statusName(e.code), details: e.details || '' });
const deadline = ms => ({ deadline: Date.now() + ms });

// Resolves {code: "OK", value} or the status the call was refused with (rejections that are not gRPC statuses throw).
async function outcome(fn) {
  try { return { code: 'OK', details: '', value: await fn() }; }
  catch (e) { if (typeof e.code !== 'number') throw e; return refusal(e); }
}

const unary = (client, method, request, md, ms = RPC_TIMEOUT_MS) => new Promise((resolve, reject) =>
  client[method](request, md, deadline(ms), (err, res) => (err ? reject(err) : resolve(res))));

// Client streaming: writes the messages, ends, resolves the response.
const clientStream = (client, method, messages, md) => new Promise((resolve, reject) => {
  const call = client[method](md, deadline(RPC_TIMEOUT_MS), (err, res) => (err ? reject(err) : resolve(res)));
  for (const m of messages) call.write(m);
  call.end();
});

// Server streaming to the end: every message, or a rejection with the status.
const serverStream = (call) => new Promise((resolve, reject) => {
  const messages = [];
  call.on('data', m => messages.push(m));
  call.on('error', reject);
  call.on('end', () => resolve(messages));
});

function loadServices(protos, grpcProtos) {
  const options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [protos, grpcProtos] };
  const cas = fs.readdirSync(path.join(protos, 'cas', 'v1')).filter(f => f.endsWith('.proto')).sort().map(f => 'cas/v1/' + f);
  const def = protoLoader.loadSync([...cas, 'grpc/health/v1/health.proto', 'grpc/reflection/v1alpha/reflection.proto'], options);
  return grpc.loadPackageDefinition(def);
}

class Scenarios {
  constructor(o) {
    const pkg = loadServices(o.protos, o.grpcProtos);
    const creds = grpc.credentials.createInsecure();
    this.args = o.args;
    this.md = new grpc.Metadata();
    this.md.set('x-api-key', o.key);
    this.noKey = new grpc.Metadata();
    this.wrongKey = new grpc.Metadata();
    this.wrongKey.set('x-api-key', 'not-the-key');
    this.collections = new pkg.cas.v1.CollectionService(o.target, creds);
    this.cartridges = new pkg.cas.v1.CartridgeService(o.target, creds);
    this.training = new pkg.cas.v1.TrainingService(o.target, creds);
    this.query = new pkg.cas.v1.QueryService(o.target, creds);
    this.health = new pkg.grpc.health.v1.Health(o.target, creds);
    this.reflection = new pkg.grpc.reflection.v1alpha.ServerReflection(o.target, creds);
    this.raw = new grpc.Client(o.target, creds);
    this.all = [this.collections, this.cartridges, this.training, this.query, this.health, this.reflection, this.raw];
  }

  async run(name) {
    try { return await this['scenario_' + name](); }
    finally { for (const c of this.all) c.close(); }
  }

  // ---- helpers ----

  // A streamed ask to its end: the deltas, the result, and how many messages came after the result.
  async ask(method, request, md = this.md, ms = RPC_TIMEOUT_MS) {
    const messages = await serverStream(this.query[method](request, md, deadline(ms)));
    let deltas = 0, streamed = '', result = null, after = 0;
    for (const m of messages) {
      if (result !== null) after++;
      if (m.kind === 'delta') { deltas++; streamed += m.delta.text; } else result = m.result;
    }
    return { deltas, streamed, after_result: after, result };
  }

  request(extra = {}) {
    const a = this.args;
    return { collection: a.collection, question: a.question, max_tokens: 4, ...extra };
  }

  okAsk() { return outcome(() => this.ask('Ask', this.request())); }

  // Bytes sent as they are (no serializer): malformed protobuf on the wire.
  rawCall(kind, method, payload) {
    const id = b => b;
    if (kind === 'client_stream') return outcome(() => new Promise((resolve, reject) => {
      const call = this.raw.makeClientStreamRequest(method, id, id, this.md, deadline(RPC_TIMEOUT_MS), (err, res) => (err ? reject(err) : resolve(res.length)));
      call.write(payload); call.end();
    }));
    if (kind === 'server_stream') return outcome(async () =>
      (await serverStream(this.raw.makeServerStreamRequest(method, id, id, payload, this.md, deadline(RPC_TIMEOUT_MS)))).length);
    return outcome(() => new Promise((resolve, reject) =>
      this.raw.makeUnaryRequest(method, id, id, payload, this.md, deadline(RPC_TIMEOUT_MS), (err, res) => (err ? reject(err) : resolve(res.length)))));
  }

  // Starts a server stream and records its events in order; `onFirst` runs at the first message.
  recorded(call, onFirst) {
    const events = [];
    let code = null, details = '', first = null;
    return new Promise(resolve => {
      const timer = setTimeout(() => finish('timeout'), 10000);
      function finish(why) { clearTimeout(timer); resolve({ events, code, details, first, ended_by: why }); }
      call.on('data', m => { events.push('data'); if (first === null) { first = m; onFirst(m); } });
      call.on('error', e => { events.push('error:' + statusName(e.code)); code = statusName(e.code); details = e.details || ''; });
      call.on('status', s => events.push('status:' + statusName(s.code)));
      call.on('end', () => { events.push('end'); setTimeout(() => finish('end'), 200); });
    });
  }

  // ---- scenarios ----

  async scenario_collections() {
    const name = this.args.name, docs = this.args.docs, md = this.md;
    const out = {};
    out.create = await unary(this.collections, 'CreateCollection', { name, chunk_tokens: 16 }, md);
    const up = ([id, text]) => ({ id, text });
    out.add = await clientStream(this.collections, 'AddDocuments', [
      { collection: name, documents: docs.slice(0, 2).map(up) },
      { documents: [...docs.slice(2).map(up), up(docs[0])] }, // the first again: unchanged
    ], md);
    out.add_changed = await clientStream(this.collections, 'AddDocuments',
      [{ collection: name, documents: [{ id: docs[1][0], text: docs[1][1] + ' And then it rained.' }] }], md);
    out.list = (await unary(this.collections, 'ListCollections', {}, md)).collections.map(c => c.name);
    out.get = await unary(this.collections, 'GetCollection', { name }, md);
    out.delete = await unary(this.collections, 'DeleteCollection', { name }, md);
    out.get_after_delete = await outcome(() => unary(this.collections, 'GetCollection', { name }, md));
    return out;
  }

  async scenario_cartridges() {
    const { id, copy_id, prefix } = this.args, md = this.md;
    const out = {};
    out.list = (await unary(this.cartridges, 'ListCartridges', { id_prefix: prefix }, md)).cartridges.map(c => c.id);
    out.get = await unary(this.cartridges, 'GetCartridge', { id }, md);
    const messages = await serverStream(this.cartridges.ExportCartridge({ id }, md, deadline(RPC_TIMEOUT_MS)));
    const data = Buffer.concat(messages.map(m => m.data));
    if (messages.length > 0 && messages[0].info) out.export_info = messages[0].info;
    out.export = { messages: messages.length, info_in: messages.map(m => m.info !== null && m.info !== undefined),
      bytes: data.length, sha256: crypto.createHash('sha256').update(data).digest('hex') };
    const pieces = [];
    for (let at = 0; at < data.length; at += 1000) pieces.push(data.subarray(at, at + 1000));
    const requests = pieces.map((p, i) => (i === 0 ? { id: copy_id, fp32: true, data: p } : { data: p }));
    out.import_pieces = requests.length;
    out.import = await clientStream(this.cartridges, 'ImportCartridge', requests, md);
    out.get_copy = await unary(this.cartridges, 'GetCartridge', { id: copy_id }, md);
    out.delete = await unary(this.cartridges, 'DeleteCartridge', { id: copy_id }, md);
    out.get_deleted = await outcome(() => unary(this.cartridges, 'GetCartridge', { id: copy_id }, md));
    return out;
  }

  async scenario_training() {
    const a = this.args, md = this.md;
    const out = {};
    out.get = await unary(this.training, 'GetTrainingJob', { id: String(a.done_job) }, md);
    out.list = (await unary(this.training, 'ListTrainingJobs', { collection: a.collection }, md)).jobs;
    out.watch_done = await serverStream(this.training.WatchTrainingJob({ id: String(a.done_job) }, md, deadline(RPC_TIMEOUT_MS)));
    const seen = [];
    const call = this.training.WatchTrainingJob({ id: String(a.running_job) }, md, deadline(a.watch_deadline_ms));
    call.on('data', m => seen.push(m));
    const r = await outcome(() => serverStream(call));
    out.watch_running = { code: r.code, details: r.details, messages: seen };
    out.get_unknown = await outcome(() => unary(this.training, 'GetTrainingJob', { id: '987654321' }, md));
    // Start and cancel, on their refusals only (a real job is trained in Cas.Service.Tests).
    out.start_unknown_collection = await outcome(() => unary(this.training, 'StartTraining', { collection: 'no-such-collection' }, md));
    out.start_chosen_documents = await outcome(() => unary(this.training, 'StartTraining', { collection: a.collection, document_ids: ['cat'] }, md));
    out.cancel_unknown = await outcome(() => unary(this.training, 'CancelTrainingJob', { id: '987654321' }, md));
    return out;
  }

  async scenario_health_reflection() {
    const out = {};
    // Health needs no API key.
    out.health = await outcome(async () => (await unary(this.health, 'Check', { service: '' }, this.noKey)).status);
    const reflect = (requests, md) => new Promise((resolve, reject) => {
      const call = this.reflection.ServerReflectionInfo(md, deadline(RPC_TIMEOUT_MS));
      serverStream(call).then(resolve, reject);
      for (const r of requests) call.write(r);
      call.end();
    });
    const answers = await reflect([{ list_services: '' }, { file_containing_symbol: 'cas.v1.QueryService' }], this.md);
    out.services = answers[0].list_services_response.service.map(s => s.name);
    const files = {};
    for (const raw of answers[1].file_descriptor_response.file_descriptor_proto) {
      const f = descriptor.FileDescriptorProto.decode(raw);
      files[f.name] = Object.fromEntries((f.service || []).map(s => [s.name, (s.method || []).map(m => m.name)]));
    }
    out.symbol_files = files;
    out.reflection_without_key = await outcome(async () => (await reflect([{ list_services: '' }], this.noKey)).length);
    return out;
  }

  async scenario_ask() {
    const a = this.args;
    const out = {};
    for (const [name, method] of [['ask', 'Ask'], ['rag', 'AskRag'], ['icl', 'AskIcl']])
      out[name] = await this.ask(method, this.request({ max_tokens: a.max_tokens }));
    return out;
  }

  async scenario_score() {
    const a = this.args, md = this.md;
    const req = (extra = {}) => ({ collection: a.collection, question: a.question, max_tokens: a.max_tokens, ...extra });
    const score = (mode, framing, answer, extra) => unary(this.query, 'Score', { request: req(extra), answer, mode, framing }, md);
    const out = {};
    out.cas = await score('QUERY_MODE_CARTRIDGES', 'ANSWER_FRAMING_CONTINUATION', a.answer);
    out.none = await score('QUERY_MODE_NO_CONTEXT', 'ANSWER_FRAMING_QUESTION', a.answer);
    out.unknown_collection = await outcome(() => score('QUERY_MODE_CARTRIDGES', 'ANSWER_FRAMING_QUESTION', a.answer, { collection: 'no-such-collection' }));
    out.empty_answer = await outcome(() => score('QUERY_MODE_CARTRIDGES', 'ANSWER_FRAMING_QUESTION', []));
    out.too_long = await outcome(() => score('QUERY_MODE_NO_CONTEXT', 'ANSWER_FRAMING_QUESTION', a.long_answer, { max_tokens: 0 }));
    out.ask_none = await this.ask('AskNoContext', req());
    const pieces = await serverStream(this.collections.GetDocumentText({ collection: a.collection, document_id: a.document }, md, deadline(RPC_TIMEOUT_MS)));
    out.text = pieces.map(m => m.text).join('');
    out.budget = await unary(this.cartridges, 'GetBudget', {}, md);
    return out;
  }

  async scenario_errors() {
    const a = this.args, md = this.md;
    const out = {};
    out.unknown_collection = await outcome(() => this.ask('Ask', this.request({ collection: 'no-such-collection' })));
    out.unknown_cartridge = await outcome(() => unary(this.cartridges, 'GetCartridge', { id: 'stories/no-such' }, md));
    out.export_unknown_cartridge = await outcome(async () =>
      (await serverStream(this.cartridges.ExportCartridge({ id: 'stories/no-such' }, md, deadline(RPC_TIMEOUT_MS)))).length);
    out.empty_question = await outcome(() => this.ask('Ask', this.request({ question: '' })));
    out.untrained_collection = await outcome(() => this.ask('Ask', this.request({ collection: a.untrained })));
    out.document_without_cartridge = await outcome(() => this.ask('Ask', this.request({ document_ids: [a.no_cartridge_doc] })));
    out.no_key = await outcome(() => this.ask('Ask', this.request(), this.noKey));
    out.wrong_key = await outcome(() => this.ask('Ask', this.request(), this.wrongKey));
    out.oversized = await outcome(() => clientStream(this.collections, 'AddDocuments',
      [{ collection: a.collection, documents: [{ id: 'huge', text: 'x'.repeat(a.oversized_bytes) }] }], md));
    out.not_a_cartridge = await outcome(() => clientStream(this.cartridges, 'ImportCartridge',
      [{ id: 'interop/garbage', data: Buffer.from('this is not a safetensors file') }], md));
    const malformed = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]); // field 1, a length that runs past the end
    out.malformed_client_stream = await this.rawCall('client_stream', '/cas.v1.CollectionService/AddDocuments', malformed);
    out.malformed_server_stream = await this.rawCall('server_stream', '/cas.v1.QueryService/Ask', malformed);
    out.malformed_unary = await this.rawCall('unary', '/cas.v1.CollectionService/GetCollection', malformed);
    out.after = await this.okAsk();
    return out;
  }

  async scenario_deadline() {
    const a = this.args;
    const out = {};
    let deltas = 0;
    const call = this.query.Ask(this.request({ max_tokens: a.max_tokens }), this.md, deadline(a.deadline_ms));
    call.on('data', m => { if (m.kind === 'delta') deltas++; });
    out.ask = { ...(await outcome(() => serverStream(call).then(m => m.length))), deltas };
    out.after = await this.okAsk();
    return out;
  }

  async scenario_cancel() {
    const a = this.args;
    const out = {};
    // grpc-js reports a cancelled stream as an 'error' (CANCELLED) and then 'end'; the order and the code are recorded.
    const ask = this.query.Ask(this.request({ max_tokens: a.max_tokens }), this.md, deadline(RPC_TIMEOUT_MS));
    const r = await this.recorded(ask, () => ask.cancel());
    out.first_kind = r.first ? r.first.kind : null;
    out.ask = { code: r.code, details: r.details, events: r.events, ended_by: r.ended_by };
    const watch = this.training.WatchTrainingJob({ id: String(a.running_job) }, this.md, deadline(RPC_TIMEOUT_MS));
    const w = await this.recorded(watch, () => watch.cancel());
    out.watch_first_state = w.first ? w.first.state : null;
    out.watch = { code: w.code, details: w.details, events: w.events, ended_by: w.ended_by };
    out.after = await this.okAsk();
    return out;
  }

  // Reads the first delta, reports, and leaves without a word: the process exits with the stream open.
  async scenario_disconnect() {
    const a = this.args;
    const call = this.query.Ask(this.request({ max_tokens: a.max_tokens }), this.md, deadline(RPC_TIMEOUT_MS));
    await new Promise(resolve => call.once('data', m => {
      process.stdout.write(JSON.stringify({ first_kind: m.kind }) + '\n', () => process.exit(0));
    }));
  }
}

// Buffers (bytes fields) are written as their length; everything else as proto-loader gives it.
const replacer = (k, v) => (v && v.type === 'Buffer' && Array.isArray(v.data) ? { bytes: v.data.length } : v);

(async () => {
  const o = parseArgs(process.argv.slice(2));
  const out = await new Scenarios(o).run(o.scenario);
  process.stdout.write(JSON.stringify(out, replacer) + '\n');
})().catch(e => { process.stderr.write('error: ' + (e && e.stack || e) + '\n'); process.exit(1); });
