"""The serving transports, the protocols over the core (`serving.core`): the v1 API (`v1.py`),
the operations routes (`operations.py`), KServe v2 over HTTP (`kserve_http.py`) and gRPC
(`grpc_service.py`) with the content they share (`v2_protocol.py`), the web page (`page.py`), the
HTTP error handlers (`errors.py`), the middleware and image encoding. Each HTTP transport is an
APIRouter that reaches the core through `server_state.ServerState`; `serving.app` composes them.
"""
