"""What both services use: configuration, logging, errors, database, server start-up.

The generated protobuf and gRPC modules live in `shared.gen` (made by `make proto`).
"""
