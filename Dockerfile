# CallPulse service, CPU image. GPU variants and baked-in model provisioning come later.
# Build:  docker build -t callpulse .
# Run:    docker run -p 50051:50051 -p 8080:8080 -p 9100:9100 -v $PWD/models:/models \
#           -e CALLPULSE_MODEL=/models/emotion2vec_plus_large -e CALLPULSE_REDIS_URL=redis://redis:6379/0 callpulse
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first, from the CPU-only index, so nothing pulls the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY proto ./proto
COPY service ./service
COPY clients ./clients
RUN pip install "grpcio-tools>=1.62" \
 && python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. proto/agentassist/v1/agent_assist.proto \
 && touch agentassist/__init__.py agentassist/v1/__init__.py \
 && pip install . \
 && pip uninstall -y grpcio-tools \
 && useradd --system --uid 10001 --home /app callpulse

USER callpulse
ENV CALLPULSE_HOST=0.0.0.0 CALLPULSE_GRPC_PORT=50051 CALLPULSE_METRICS_PORT=9100
EXPOSE 50051 8080 9100
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]
