"""Online prediction: a server that speaks TF Serving's REST and gRPC contract, and its client.

  server      `python -m serving.server`, the command line; model_server: the in-process `ModelServer`
  options     ServerOptions and the tensorflow_model_server-style flags
  config      the text-proto config files (models, batching, monitoring); protos: the two the wheel lacks
  manager     versions: polling, policies, loading before unloading, labels, status
  policy      integer version directories and version policies
  servable    one loaded SavedModel version: SignatureDefs and signature functions
  warmup      replaying assets.extra/tf_serving_warmup_requests
  inference   Predict / Classify / Regress / MultiInference on a servable, with TF Serving's checks
  batching    the batch scheduler
  core        what both front ends share; rest, grpc_api: the front ends
  json_tensor REST JSON <-> tensors; tensors: TensorProto <-> numpy
  metrics     Prometheus text exposition; errors: status codes and their HTTP mapping
  client      a small REST client and `python -m serving.client`; grpc_client: a small gRPC client
"""
