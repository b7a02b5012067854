"""
A Python gRPC client, from stubs generated out of the .proto files the package ships (as
tritonclient.grpc ships its own from the same grpc_service.proto), against a running server:
python3 check.py PORT. Prints one line per check; exits non-zero on the first surprise.
Run by test/grpc/python.test.ts where python3 has grpcio and grpcio-tools.
"""
import sys, struct, grpc
import grpc_service_pb2 as pb, grpc_service_pb2_grpc as svc, health_pb2, health_pb2_grpc
port = sys.argv[1]
ch = grpc.insecure_channel(f"127.0.0.1:{port}")
stub = svc.GRPCInferenceServiceStub(ch)
assert stub.ServerLive(pb.ServerLiveRequest()).live
print("live")
assert "statistics" in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
print("metadata")
assert stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
print("ready")
md = stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp"))
assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("input", "FP32", [-1, 784])]
print("model metadata")
cfg = stub.ModelConfig(pb.ModelConfigRequest(name="mlp")).config
from model_config_pb2 import DataType
assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 64, cfg
assert [(i.name, DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [("input", "TYPE_FP32", [784])], cfg.input
assert cfg.dynamic_batching.priority_levels == 4 and cfg.dynamic_batching.default_priority_level == 3
print("config")
row = struct.pack("<784f", *([0.5] * 784))
req = pb.ModelInferRequest(model_name="mlp", id="py-1")
t = req.inputs.add(); t.name = "input"; t.datatype = "FP32"; t.shape.extend([1, 784])
req.raw_input_contents.append(row)
req.parameters["priority"].uint64_param = 1
req.parameters["timeout"].int64_param = 5_000_000
r = stub.ModelInfer(req, timeout=5)
assert r.id == "py-1" and [(o.name, list(o.shape)) for o in r.outputs] == [("logits", [1, 10])]
logits = struct.unpack("<10f", r.raw_output_contents[0])
assert abs(logits[0] - 0.43748876) < 1e-5, logits
print("infer")
req2 = pb.ModelInferRequest(model_name="mlp")
t = req2.inputs.add(); t.name = "input"; t.datatype = "FP32"; t.shape.extend([1, 784]); t.contents.fp32_contents.extend([0.5] * 784)
r2 = stub.ModelInfer(req2)
assert r2.raw_output_contents[0] == r.raw_output_contents[0]
print("typed contents")
# tritonclient's InferRequestedOutput("logits", class_count=3): the top 3 as BYTES, 4-byte lengths.
req3 = pb.ModelInferRequest(model_name="mlp")
t = req3.inputs.add(); t.name = "input"; t.datatype = "FP32"; t.shape.extend([1, 784])
req3.raw_input_contents.append(row)
o = req3.outputs.add(); o.name = "logits"; o.parameters["classification"].int64_param = 3
r3 = stub.ModelInfer(req3)
assert [(x.name, x.datatype, list(x.shape)) for x in r3.outputs] == [("logits", "BYTES", [1, 3])], r3.outputs
raw, classes = r3.raw_output_contents[0], []
while raw:
    (n,) = struct.unpack("<I", raw[:4]); classes.append(raw[4:4 + n].decode()); raw = raw[4 + n:]
top = sorted(range(10), key=lambda i: -logits[i])[:3]
assert [int(c.split(":")[1]) for c in classes] == top, (classes, top)
print("classification")
try:
    bad = pb.ModelInferRequest(model_name="mlp"); t = bad.inputs.add(); t.name = "input"; t.datatype = "FP32"; t.shape.extend([1, 3]); bad.raw_input_contents.append(struct.pack("<3f", 1, 2, 3))
    stub.ModelInfer(bad)
    raise AssertionError("a bad shape was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "dim 1 is 3" in e.details(), (e.code(), e.details())
    print("error")
stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"))
s = stats.model_stats[0]
assert s.inference_count == 3 and s.execution_count == 3 and s.inference_stats.success.count == 3, s  # infer, typed contents, classification
print("stats")
def gen():
    for i in range(5):
        q = pb.ModelInferRequest(model_name="mlp", id=f"s{i}")
        t = q.inputs.add(); t.name = "input"; t.datatype = "FP32"; t.shape.extend([1, 784]); q.raw_input_contents.append(row)
        yield q
    q = pb.ModelInferRequest(model_name="nope", id="bad"); yield q
ids = [(m.infer_response.id, m.error_message) for m in stub.ModelStreamInfer(gen())]
assert sorted(ids) == [("bad", 'model "nope" not found')] + [(f"s{i}", "") for i in range(5)], ids
print("stream")
h = health_pb2_grpc.HealthStub(ch)
assert health_pb2.HealthCheckResponse.ServingStatus.Name(h.Check(health_pb2.HealthCheckRequest(service="")).status) == "SERVING"
print("health")
