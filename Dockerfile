# One image for both services; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY . .
# Generate the gRPC code (as `make proto` does), then install the project.
RUN pip install --no-cache-dir grpcio-tools \
 && rm -rf shared/gen \
 && python -m grpc_tools.protoc --proto_path=shared/gen=protos \
      --python_out=. --pyi_out=. --grpc_python_out=. $(find protos -name '*.proto') \
 && find shared/gen -type d -exec touch {}/__init__.py \; \
 && pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
