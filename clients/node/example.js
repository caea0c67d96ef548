// The wallet system from Node.js, checking every answer: two users register and log in, a
// payments service credits one, she pays the other, a checkout authorises and captures a
// payment, both read their history, and a spent refresh token is refused. Exits non-zero at
// the first wrong answer.
//
//   CLIENT_ID=svc_... CLIENT_SECRET=... node example.js
//
// The service account needs the scopes wallet:credit and wallet:hold
// (`make service-account NAME=shop-backend SCOPES=wallet:credit,wallet:hold`).
// AUTH_ADDRESS and WALLET_ADDRESS default to localhost:50051 and localhost:50052.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { call, connect, errorInfo, status } from "./wallet-client.js";

const { auth, wallet } = connect(
  process.env.AUTH_ADDRESS ?? "localhost:50051",
  process.env.WALLET_ADDRESS ?? "localhost:50052",
);
const run = randomUUID().slice(0, 8); // new emails and keys on every run
const PASSWORD = "correct horse battery staple";

/** Awaits a call that must fail with `code` and the ErrorInfo `reason`. */
async function refused(promise, code, reason) {
  const error = await promise.then(
    (response) => assert.fail(`expected ${reason}, got ${JSON.stringify(response)}`),
    (error) => error,
  );
  assert.equal(error.code, code, error.message);
  assert.equal(errorInfo(error)?.reason, reason, error.message);
}

async function newUser(name) {
  const email = `${name}-${run}@Example.com`;
  const { user } = await call(auth, "Register", { email, password: PASSWORD, display_name: name });
  assert.equal(user.email, email.toLowerCase()); // emails are normalised
  const { tokens } = await call(auth, "Login", { email, password: PASSWORD });
  assert.equal(tokens.token_type, "Bearer");
  const me = await call(auth, "GetMe", {}, tokens.access_token);
  assert.equal(me.user.id, user.id);
  return { id: user.id, tokens, token: tokens.access_token };
}

async function balances(owner, walletId) {
  const { wallet: w } = await call(wallet, "GetWallet", { wallet_id: walletId }, owner.token);
  return { balance: w.balance, available: w.available_balance };
}

// Users and a service.
const ada = await newUser("ada");
const grace = await newUser("grace");
const service = await call(auth, "IssueServiceToken", {
  client_id: process.env.CLIENT_ID,
  client_secret: process.env.CLIENT_SECRET,
});
assert.deepEqual([...service.scopes].sort(), ["wallet:credit", "wallet:hold"]);
const shop = service.access_token;

// A wallet each; one per currency.
const adaWallet = (await call(wallet, "CreateWallet", { currency: "EUR" }, ada.token)).wallet;
const graceWallet = (await call(wallet, "CreateWallet", { currency: "EUR" }, grace.token)).wallet;
assert.equal(adaWallet.balance, "0");
assert.equal(adaWallet.currency_exponent, 2);
await refused(
  call(wallet, "CreateWallet", { currency: "EUR" }, ada.token),
  status.ALREADY_EXISTS,
  "WALLET_EXISTS",
);

// The service credits 100.00 EUR; a retry with the same key moves nothing.
const deposit = { wallet_id: adaWallet.id, amount: 10000, idempotency_key: `deposit-${run}` };
const credited = await call(wallet, "Credit", deposit, shop);
assert.equal(credited.transaction.type, "TRANSACTION_TYPE_CREDIT");
assert.equal(credited.transaction.amount, "10000");
const retried = await call(wallet, "Credit", deposit, shop);
assert.equal(retried.transaction.id, credited.transaction.id);
assert.deepEqual(await balances(ada, adaWallet.id), { balance: "10000", available: "10000" });
await refused(
  call(wallet, "Credit", { ...deposit, amount: 1 }, shop),
  status.ALREADY_EXISTS,
  "IDEMPOTENCY_KEY_REUSED",
);

// Ada sends 40.00 to Grace; she cannot spend more than she has; a user cannot credit.
const transfer = await call(
  wallet,
  "Transfer",
  {
    source_wallet_id: adaWallet.id,
    destination_wallet_id: graceWallet.id,
    amount: "4000", // int64 as a string works too
    idempotency_key: `rent-${run}`,
  },
  ada.token,
);
assert.equal(transfer.transaction.type, "TRANSACTION_TYPE_TRANSFER");
assert.equal(transfer.source_balance_after, "6000");
await refused(
  call(
    wallet,
    "Debit",
    { wallet_id: adaWallet.id, amount: 999999, idempotency_key: `too-much-${run}` },
    ada.token,
  ),
  status.FAILED_PRECONDITION,
  "INSUFFICIENT_FUNDS",
);
await refused(
  call(wallet, "Credit", { wallet_id: adaWallet.id, amount: 1, idempotency_key: "mine" }, ada.token),
  status.PERMISSION_DENIED,
  "MISSING_SCOPE",
);

// The checkout authorises 25.00 of Ada's money for Grace, then captures 15.00 of it.
const { hold } = await call(
  wallet,
  "CreateHold",
  {
    wallet_id: adaWallet.id,
    destination_wallet_id: graceWallet.id,
    amount: 2500,
    idempotency_key: `order-${run}-auth`,
    reference: "order 77",
  },
  shop,
);
assert.equal(hold.status, "HOLD_STATUS_HELD");
assert.deepEqual(await balances(ada, adaWallet.id), { balance: "6000", available: "3500" });
const capture = await call(
  wallet,
  "CaptureHold",
  { hold_id: hold.id, amount: 1500, idempotency_key: `order-${run}-capture` },
  shop,
);
assert.equal(capture.hold.status, "HOLD_STATUS_CAPTURED");
assert.equal(capture.hold.captured_amount, "1500");
assert.equal(capture.transaction.type, "TRANSACTION_TYPE_CAPTURE");
assert.equal(capture.transaction.hold_id, hold.id);
assert.deepEqual(await balances(ada, adaWallet.id), { balance: "4500", available: "4500" });
await refused(
  call(wallet, "CaptureHold", { hold_id: hold.id, idempotency_key: `again-${run}` }, shop),
  status.FAILED_PRECONDITION,
  "HOLD_ALREADY_CAPTURED",
);

// Ada's history, newest first, two entries a page.
const entry = (e) => [e.transaction.type, e.balance_change, e.balance_after, e.sequence];
const first = await call(
  wallet,
  "ListTransactions",
  { wallet_id: adaWallet.id, page_size: 2 },
  ada.token,
);
assert.deepEqual(first.entries.map(entry), [
  ["TRANSACTION_TYPE_CAPTURE", "-1500", "4500", "3"],
  ["TRANSACTION_TYPE_TRANSFER", "-4000", "6000", "2"],
]);
assert.notEqual(first.next_page_token, "");
const second = await call(
  wallet,
  "ListTransactions",
  { wallet_id: adaWallet.id, page_size: 2, page_token: first.next_page_token },
  ada.token,
);
assert.deepEqual(second.entries.map(entry), [["TRANSACTION_TYPE_CREDIT", "10000", "10000", "1"]]);
assert.equal(second.next_page_token, "");

// Grace received the transfer and the capture.
const graceHistory = await call(wallet, "ListTransactions", { wallet_id: graceWallet.id }, grace.token);
assert.deepEqual(graceHistory.entries.map(entry), [
  ["TRANSACTION_TYPE_CAPTURE", "1500", "5500", "2"],
  ["TRANSACTION_TYPE_TRANSFER", "4000", "4000", "1"],
]);
assert.deepEqual(await balances(grace, graceWallet.id), { balance: "5500", available: "5500" });

// Grace's app refreshes her session; the refresh token it spent is refused if presented
// again, which ends the session (a stolen token gets nothing).
const refreshed = await call(auth, "RefreshToken", { refresh_token: grace.tokens.refresh_token });
assert.notEqual(refreshed.tokens.refresh_token, grace.tokens.refresh_token);
await refused(
  call(auth, "RefreshToken", { refresh_token: grace.tokens.refresh_token }),
  status.UNAUTHENTICATED,
  "REFRESH_TOKEN_REUSED",
);

// The last line, for whoever runs this: the wallets and the balances this run left.
console.log(JSON.stringify({ balances: { [adaWallet.id]: "4500", [graceWallet.id]: "5500" } }));
auth.close();
wallet.close();
