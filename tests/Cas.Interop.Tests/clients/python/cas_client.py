#!/usr/bin/env python3
"""A cas.v1 client built on Debian's python3-grpcio, for tests/Cas.Interop.Tests.

Stubs are generated at start from protos/cas/v1/*.proto (and grpc-proto's health and reflection protos) with
python3-grpc-tools. One scenario per run; it prints one JSON object on stdout with what it saw (responses, statuses),
and the C# test asserts on it. The client checks nothing itself: it only reports.

  /usr/bin/python3 cas_client.py --target 127.0.0.1:PORT --key KEY --protos REPO/protos \
      --grpc-protos /usr/share/grpc-proto --args JSON SCENARIO
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import grpc
from google.protobuf import json_format

RPC_TIMEOUT = 30.0  # seconds; every call has a deadline so that nothing here waits forever


def build_stubs(protos, grpc_protos, out):
    """Generates the Python modules into `out` and puts it on sys.path. The gRPC protos are copied under names
    that do not start with grpc/ (their generated modules would shadow the grpc package); their proto packages,
    and so the service names, stay grpc.health.v1 and grpc.reflection.v1alpha."""
    ext = os.path.join(out, "ext")
    os.makedirs(ext)
    shutil.copy(os.path.join(grpc_protos, "grpc", "health", "v1", "health.proto"), os.path.join(ext, "interop_health.proto"))
    shutil.copy(os.path.join(grpc_protos, "grpc", "reflection", "v1alpha", "reflection.proto"),
                os.path.join(ext, "interop_reflection.proto"))
    cas = sorted("cas/v1/" + f for f in os.listdir(os.path.join(protos, "cas", "v1")) if f.endswith(".proto"))
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I" + protos, "-I" + ext, "--python_out=" + out,
           "--grpc_python_out=" + out] + cas + ["interop_health.proto", "interop_reflection.proto"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit("protoc failed: " + done.stderr)
    sys.path.insert(0, out)


def to_dict(message):
    """A message as JSON-able dict with proto field names and default values (like proto-loader's defaults: true)."""
    try:
        return json_format.MessageToDict(message, preserving_proto_field_name=True, including_default_value_fields=True)
    except TypeError:  # protobuf >= 26 renamed the option
        return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def status(error):
    return {"code": error.code().name, "details": error.details() or ""}


def outcome(fn):
    """Runs fn; {"code": "OK", "value": ...} or the status it was refused with."""
    try:
        return {"code": "OK", "details": "", "value": fn()}
    except grpc.RpcError as e:
        return status(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--protos", required=True)
    ap.add_argument("--grpc-protos", default="/usr/share/grpc-proto")
    ap.add_argument("--args", default="{}")
    ap.add_argument("scenario")
    a = ap.parse_args()
    args = json.loads(a.args)
    work = tempfile.mkdtemp(prefix="cas-interop-py-")
    args["_work"] = work
    try:
        build_stubs(a.protos, a.grpc_protos, work)
        result = Scenarios(a.target, a.key, args).run(a.scenario)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


class Scenarios:
    def __init__(self, target, key, args):
        from cas.v1 import cartridge_pb2, cartridge_pb2_grpc, collection_pb2, collection_pb2_grpc
        from cas.v1 import query_pb2, query_pb2_grpc, training_pb2, training_pb2_grpc
        import interop_health_pb2
        import interop_health_pb2_grpc
        import interop_reflection_pb2
        import interop_reflection_pb2_grpc
        self.pb = {"cartridge": cartridge_pb2, "collection": collection_pb2, "query": query_pb2, "training": training_pb2,
                   "health": interop_health_pb2, "reflection": interop_reflection_pb2}
        self.args = args
        self.target = target
        self.channel = grpc.insecure_channel(target)
        self.md = [("x-api-key", key)]
        self.collections = collection_pb2_grpc.CollectionServiceStub(self.channel)
        self.cartridges = cartridge_pb2_grpc.CartridgeServiceStub(self.channel)
        self.training = training_pb2_grpc.TrainingServiceStub(self.channel)
        self.query = query_pb2_grpc.QueryServiceStub(self.channel)
        self.health = interop_health_pb2_grpc.HealthStub(self.channel)
        self.reflection = interop_reflection_pb2_grpc.ServerReflectionStub(self.channel)

    def run(self, name):
        out = getattr(self, "scenario_" + name)()
        self.channel.close()
        return out

    # ---- helpers ----

    def ask(self, method, request, timeout=RPC_TIMEOUT, metadata=None):
        """Runs a streamed ask to its end: the deltas, the result, and how many messages came after the result."""
        deltas, result, after = [], None, 0
        for m in method(request, metadata=self.md if metadata is None else metadata, timeout=timeout):
            if result is not None:
                after += 1
            if m.WhichOneof("kind") == "delta":
                deltas.append(m.delta.text)
            else:
                result = m.result
        return {"deltas": len(deltas), "streamed": "".join(deltas), "after_result": after,
                "result": to_dict(result) if result is not None else None}

    def ask_request(self, **kw):
        return self.pb["query"].AskRequest(**kw)

    def add_docs(self, messages, metadata=None):
        return self.collections.AddDocuments(iter(messages), metadata=self.md if metadata is None else metadata,
                                             timeout=RPC_TIMEOUT)

    def raw(self, kind, path, payload):
        """Sends bytes as they are (no serializer) to a method: malformed protobuf on the wire."""
        if kind == "client_stream":
            fn = self.channel.stream_unary(path)
            return outcome(lambda: len(fn(iter([payload]), metadata=self.md, timeout=RPC_TIMEOUT)))
        if kind == "server_stream":
            fn = self.channel.unary_stream(path)
            return outcome(lambda: len(list(fn(payload, metadata=self.md, timeout=RPC_TIMEOUT))))
        fn = self.channel.unary_unary(path)
        return outcome(lambda: len(fn(payload, metadata=self.md, timeout=RPC_TIMEOUT)))

    def ok_ask(self):
        """A plain question after the others: does the server still answer?"""
        a = self.args
        return outcome(lambda: self.ask(self.query.Ask, self.ask_request(collection=a["collection"], question=a["question"],
                                                                         max_tokens=4)))

    # ---- scenarios ----

    def scenario_collections(self):
        c = self.pb["collection"]
        name = self.args["name"]
        out = {}
        out["create"] = to_dict(self.collections.CreateCollection(c.CreateCollectionRequest(name=name, chunk_tokens=16),
                                                                  metadata=self.md, timeout=RPC_TIMEOUT))
        docs = self.args["docs"]  # [[id, text], ...]
        first = c.AddDocumentsRequest(collection=name, documents=[c.DocumentUpload(id=i, text=t) for i, t in docs[:2]])
        rest = c.AddDocumentsRequest(documents=[c.DocumentUpload(id=i, text=t) for i, t in docs[2:]]
                                     + [c.DocumentUpload(id=docs[0][0], text=docs[0][1])])  # the first again: unchanged
        out["add"] = to_dict(self.add_docs([first, rest]))
        changed = c.AddDocumentsRequest(collection=name, documents=[c.DocumentUpload(id=docs[1][0], text=docs[1][1] + " And then it rained.")])
        out["add_changed"] = to_dict(self.add_docs([changed]))
        out["list"] = [x.name for x in self.collections.ListCollections(c.ListCollectionsRequest(), metadata=self.md,
                                                                         timeout=RPC_TIMEOUT).collections]
        out["get"] = to_dict(self.collections.GetCollection(c.GetCollectionRequest(name=name), metadata=self.md, timeout=RPC_TIMEOUT))
        out["delete"] = to_dict(self.collections.DeleteCollection(c.DeleteCollectionRequest(name=name), metadata=self.md,
                                                                  timeout=RPC_TIMEOUT))
        out["get_after_delete"] = outcome(lambda: to_dict(self.collections.GetCollection(
            c.GetCollectionRequest(name=name), metadata=self.md, timeout=RPC_TIMEOUT)))
        return out

    def scenario_cartridges(self):
        k = self.pb["cartridge"]
        cid, copy_id = self.args["id"], self.args["copy_id"]
        out = {}
        out["list"] = [x.id for x in self.cartridges.ListCartridges(k.ListCartridgesRequest(id_prefix=self.args["prefix"]),
                                                                    metadata=self.md, timeout=RPC_TIMEOUT).cartridges]
        out["get"] = to_dict(self.cartridges.GetCartridge(k.GetCartridgeRequest(id=cid), metadata=self.md, timeout=RPC_TIMEOUT))
        data, infos, messages = bytearray(), [], 0
        for m in self.cartridges.ExportCartridge(k.GetCartridgeRequest(id=cid), metadata=self.md, timeout=RPC_TIMEOUT):
            messages += 1
            infos.append(m.HasField("info"))
            if messages == 1 and m.HasField("info"):
                out["export_info"] = to_dict(m.info)
            data += m.data
        out["export"] = {"messages": messages, "info_in": infos, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        pieces = [bytes(data[i:i + 1000]) for i in range(0, len(data), 1000)]
        requests = [k.ImportCartridgeRequest(id=copy_id, fp32=True, data=pieces[0])] + [k.ImportCartridgeRequest(data=p) for p in pieces[1:]]
        out["import_pieces"] = len(requests)
        out["import"] = to_dict(self.cartridges.ImportCartridge(iter(requests), metadata=self.md, timeout=RPC_TIMEOUT))
        out["get_copy"] = to_dict(self.cartridges.GetCartridge(k.GetCartridgeRequest(id=copy_id), metadata=self.md, timeout=RPC_TIMEOUT))
        out["delete"] = to_dict(self.cartridges.DeleteCartridge(k.DeleteCartridgeRequest(id=copy_id), metadata=self.md, timeout=RPC_TIMEOUT))
        out["get_deleted"] = outcome(lambda: to_dict(self.cartridges.GetCartridge(k.GetCartridgeRequest(id=copy_id),
                                                                                  metadata=self.md, timeout=RPC_TIMEOUT)))
        return out

    def scenario_training(self):
        t = self.pb["training"]
        done, running = int(self.args["done_job"]), int(self.args["running_job"])
        out = {}
        out["get"] = to_dict(self.training.GetTrainingJob(t.GetTrainingJobRequest(id=done), metadata=self.md, timeout=RPC_TIMEOUT))
        out["list"] = [to_dict(j) for j in self.training.ListTrainingJobs(t.ListTrainingJobsRequest(collection=self.args["collection"]),
                                                                        metadata=self.md, timeout=RPC_TIMEOUT).jobs]
        out["watch_done"] = [to_dict(j) for j in self.training.WatchTrainingJob(t.GetTrainingJobRequest(id=done), metadata=self.md,
                                                                                timeout=RPC_TIMEOUT)]
        seen = []
        try:
            for j in self.training.WatchTrainingJob(t.GetTrainingJobRequest(id=running), metadata=self.md,
                                                    timeout=self.args["watch_deadline_ms"] / 1000.0):
                seen.append(to_dict(j))
            out["watch_running"] = {"code": "OK", "details": "", "messages": seen}
        except grpc.RpcError as e:
            out["watch_running"] = dict(status(e), messages=seen)
        out["get_unknown"] = outcome(lambda: to_dict(self.training.GetTrainingJob(t.GetTrainingJobRequest(id=987654321),
                                                                                  metadata=self.md, timeout=RPC_TIMEOUT)))
        # Start and cancel, on their refusals only (a real job is trained in Cas.Service.Tests).
        out["start_unknown_collection"] = outcome(lambda: to_dict(self.training.StartTraining(
            t.StartTrainingRequest(collection="no-such-collection"), metadata=self.md, timeout=RPC_TIMEOUT)))
        out["start_chosen_documents"] = outcome(lambda: to_dict(self.training.StartTraining(
            t.StartTrainingRequest(collection=self.args["collection"], document_ids=["cat"]), metadata=self.md, timeout=RPC_TIMEOUT)))
        out["cancel_unknown"] = outcome(lambda: to_dict(self.training.CancelTrainingJob(
            t.CancelTrainingJobRequest(id=987654321), metadata=self.md, timeout=RPC_TIMEOUT)))
        return out

    def scenario_health_reflection(self):
        from google.protobuf import descriptor_pb2
        h, r = self.pb["health"], self.pb["reflection"]
        out = {}
        # Health needs no API key.
        out["health"] = outcome(lambda: h.HealthCheckResponse.ServingStatus.Name(
            self.health.Check(h.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT).status))

        def reflect(requests, metadata):
            return list(self.reflection.ServerReflectionInfo(iter(requests), metadata=metadata, timeout=RPC_TIMEOUT))

        answers = reflect([r.ServerReflectionRequest(list_services=""),
                           r.ServerReflectionRequest(file_containing_symbol="cas.v1.QueryService")], self.md)
        out["services"] = [s.name for s in answers[0].list_services_response.service]
        files = {}
        for raw in answers[1].file_descriptor_response.file_descriptor_proto:
            f = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[f.name] = {s.name: [m.name for m in s.method] for s in f.service}
        out["symbol_files"] = files
        out["reflection_without_key"] = outcome(lambda: len(reflect([r.ServerReflectionRequest(list_services="")], [])))
        return out

    def scenario_ask(self):
        a = self.args
        out = {}
        for name, method in (("ask", self.query.Ask), ("rag", self.query.AskRag), ("icl", self.query.AskIcl)):
            out[name] = self.ask(method, self.ask_request(collection=a["collection"], question=a["question"], max_tokens=a["max_tokens"]))
        return out

    def scenario_score(self):
        a = self.args
        q, c, k = self.pb["query"], self.pb["collection"], self.pb["cartridge"]
        req = lambda **kw: q.AskRequest(**dict(dict(collection=a["collection"], question=a["question"], max_tokens=a["max_tokens"]), **kw))
        score = lambda mode, framing, answer, **kw: to_dict(self.query.Score(
            q.ScoreRequest(request=req(**kw), answer=answer, mode=q.QueryMode.Value(mode), framing=q.AnswerFraming.Value(framing)),
            metadata=self.md, timeout=RPC_TIMEOUT))
        out = {}
        out["cas"] = score("QUERY_MODE_CARTRIDGES", "ANSWER_FRAMING_CONTINUATION", a["answer"])
        out["none"] = score("QUERY_MODE_NO_CONTEXT", "ANSWER_FRAMING_QUESTION", a["answer"])
        out["unknown_collection"] = outcome(lambda: score("QUERY_MODE_CARTRIDGES", "ANSWER_FRAMING_QUESTION", a["answer"], collection="no-such-collection"))
        out["empty_answer"] = outcome(lambda: score("QUERY_MODE_CARTRIDGES", "ANSWER_FRAMING_QUESTION", []))
        out["too_long"] = outcome(lambda: score("QUERY_MODE_NO_CONTEXT", "ANSWER_FRAMING_QUESTION", a["long_answer"], max_tokens=0))
        out["ask_none"] = self.ask(self.query.AskNoContext, req())
        pieces = list(self.collections.GetDocumentText(c.GetDocumentTextRequest(collection=a["collection"], document_id=a["document"]),
                                                       metadata=self.md, timeout=RPC_TIMEOUT))
        out["text"] = "".join(m.text for m in pieces)
        out["budget"] = to_dict(self.cartridges.GetBudget(k.GetBudgetRequest(), metadata=self.md, timeout=RPC_TIMEOUT))
        return out

    def scenario_errors(self):
        a = self.args
        c, k = self.pb["collection"], self.pb["cartridge"]
        q = lambda **kw: self.ask_request(**dict(dict(collection=a["collection"], question=a["question"], max_tokens=4), **kw))
        out = {}
        out["unknown_collection"] = outcome(lambda: self.ask(self.query.Ask, q(collection="no-such-collection")))
        out["unknown_cartridge"] = outcome(lambda: to_dict(self.cartridges.GetCartridge(k.GetCartridgeRequest(id="stories/no-such"),
                                                                                        metadata=self.md, timeout=RPC_TIMEOUT)))
        out["export_unknown_cartridge"] = outcome(lambda: len(list(self.cartridges.ExportCartridge(
            k.GetCartridgeRequest(id="stories/no-such"), metadata=self.md, timeout=RPC_TIMEOUT))))
        out["empty_question"] = outcome(lambda: self.ask(self.query.Ask, q(question="")))
        out["untrained_collection"] = outcome(lambda: self.ask(self.query.Ask, q(collection=a["untrained"])))
        out["document_without_cartridge"] = outcome(lambda: self.ask(self.query.Ask, q(document_ids=[a["no_cartridge_doc"]])))
        out["no_key"] = outcome(lambda: self.ask(self.query.Ask, q(), metadata=[]))
        out["wrong_key"] = outcome(lambda: self.ask(self.query.Ask, q(), metadata=[("x-api-key", "not-the-key")]))
        big = c.AddDocumentsRequest(collection=a["collection"], documents=[c.DocumentUpload(id="huge", text="x" * a["oversized_bytes"])])
        out["oversized"] = outcome(lambda: to_dict(self.add_docs([big])))
        out["not_a_cartridge"] = outcome(lambda: to_dict(self.cartridges.ImportCartridge(
            iter([k.ImportCartridgeRequest(id="interop/garbage", data=b"this is not a safetensors file")]), metadata=self.md,
            timeout=RPC_TIMEOUT)))
        malformed = bytes([0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])  # field 1, a length that runs past the end
        out["malformed_client_stream"] = self.raw("client_stream", "/cas.v1.CollectionService/AddDocuments", malformed)
        out["malformed_server_stream"] = self.raw("server_stream", "/cas.v1.QueryService/Ask", malformed)
        out["malformed_unary"] = self.raw("unary", "/cas.v1.CollectionService/GetCollection", malformed)
        out["after"] = self.ok_ask()
        return out

    def scenario_deadline(self):
        a = self.args
        out = {}
        seen = {"deltas": 0}

        def run():
            for m in self.query.Ask(self.ask_request(collection=a["collection"], question=a["question"], max_tokens=a["max_tokens"]),
                                    metadata=self.md, timeout=a["deadline_ms"] / 1000.0):
                if m.WhichOneof("kind") == "delta":
                    seen["deltas"] += 1
            return seen["deltas"]

        out["ask"] = dict(outcome(run), deltas=seen["deltas"])
        out["after"] = self.ok_ask()
        return out

    def scenario_cancel(self):
        a = self.args
        t = self.pb["training"]
        out = {}
        call = self.query.Ask(self.ask_request(collection=a["collection"], question=a["question"], max_tokens=a["max_tokens"]),
                              metadata=self.md, timeout=RPC_TIMEOUT)
        first = next(call)
        out["first_kind"] = first.WhichOneof("kind")
        out["cancel_returned"] = call.cancel()  # True: the call had not ended yet
        out["ask"] = {"code": call.code().name, "details": call.details() or ""}
        try:
            rest = sum(1 for _ in call)
            out["ask"]["more_messages"] = rest
        except grpc.RpcError as e:
            out["ask"]["iter_code"] = e.code().name
        watch = self.training.WatchTrainingJob(t.GetTrainingJobRequest(id=int(a["running_job"])), metadata=self.md, timeout=RPC_TIMEOUT)
        out["watch_first_state"] = t.JobState.Name(next(watch).state)
        out["watch_cancel_returned"] = watch.cancel()
        out["watch"] = {"code": watch.code().name, "details": watch.details() or ""}
        out["after"] = self.ok_ask()
        return out

    def scenario_disconnect(self):
        """Reads the first delta, reports, and leaves without a word: the process exits with the stream open."""
        a = self.args
        call = self.query.Ask(self.ask_request(collection=a["collection"], question=a["question"], max_tokens=a["max_tokens"]),
                              metadata=self.md, timeout=RPC_TIMEOUT)
        first = next(call)
        print(json.dumps({"first_kind": first.WhichOneof("kind")}), flush=True)
        shutil.rmtree(a["_work"], ignore_errors=True)
        os._exit(0)


if __name__ == "__main__":
    main()
