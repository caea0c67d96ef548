// Clients of auth.v1.AuthService and wallet.v1.WalletService, built at run time from the
// repository's protos/ with @grpc/proto-loader (no generated code to keep in step).
//
//   const { auth, wallet } = connect("localhost:50051", "localhost:50052");
//   const { tokens } = await call(auth, "Login", { email, password });
//   const { wallet: w } = await call(wallet, "CreateWallet", { currency: "EUR" }, tokens.access_token);
//
// Field names are the protos' (snake_case), int64 values are strings ("10000"), enums are
// their names ("TRANSACTION_TYPE_CREDIT"), as in proto3 JSON and grpcurl.

import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

export const PROTOS = fileURLToPath(new URL("../../protos", import.meta.url));

const definition = protoLoader.loadSync(["auth/v1/auth.proto", "wallet/v1/wallet.proto"], {
  includeDirs: [PROTOS],
  keepCase: true, // snake_case, as in the protos
  longs: String, // int64 money never passes through a float
  enums: String,
  defaults: true,
  oneofs: true,
});
const packages = grpc.loadPackageDefinition(definition);

/** Plaintext channels to both services (use grpc.credentials.createSsl() for TLS). */
export function connect(authAddress, walletAddress, credentials = grpc.credentials.createInsecure()) {
  return {
    auth: new packages.auth.v1.AuthService(authAddress, credentials),
    wallet: new packages.wallet.v1.WalletService(walletAddress, credentials),
  };
}

/** One unary call as a promise, with the access token (if any) and a deadline. */
export function call(client, method, request, accessToken = "", deadlineSeconds = 10) {
  const metadata = new grpc.Metadata();
  if (accessToken) metadata.set("authorization", `Bearer ${accessToken}`);
  const deadline = new Date(Date.now() + deadlineSeconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// Every error of both services carries a google.rpc.Status with one google.rpc.ErrorInfo in
// the `grpc-status-details-bin` trailer. These are their wire shapes (googleapis
// google/rpc/status.proto and error_details.proto; Any as in google/protobuf/any.proto).
const rpcTypes = protobuf.parse(
  `syntax = "proto3";
   package google.rpc;
   message Any { string type_url = 1; bytes value = 2; }
   message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
   message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }`,
  { keepCase: true },
).root;
const Status = rpcTypes.lookupType("google.rpc.Status");
const ErrorInfo = rpcTypes.lookupType("google.rpc.ErrorInfo");

/** The ErrorInfo of a failed call: { reason, domain, metadata }, or null if it has none. */
export function errorInfo(error) {
  const [details] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!details) return null;
  const status = Status.decode(details);
  const info = status.details.find((any) => any.type_url.endsWith("/google.rpc.ErrorInfo"));
  return info ? ErrorInfo.toObject(ErrorInfo.decode(info.value), { defaults: true }) : null;
}

export const status = grpc.status;
