#!/usr/bin/env bash
# The grpcurl sessions of README.md ("Try it with grpcurl"), docs/holds-and-refunds.md and
# docs/batches-events-status.md, as one script: the same commands, with every answer checked.
# `make test` runs it against real servers (tests/test_walkthrough.py), and checks that each
# command those documents show is in here, so the documents cannot drift from what runs.
#
#   make run                  # in one terminal
#   make walkthrough          # in another (or docs/walkthrough.sh)
#
# From the environment: AUTH_PORT and WALLET_PORT (50051, 50052), and DATABASE_URL for the
# operator commands (unset: the database of `make run`); SHOW_ANSWERS=1 prints the answers it
# checks. Needs jq. Stops with a message and a non-zero exit at the first answer that is not
# the documented one.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "walkthrough.sh needs jq (apt-get install jq)" >&2; exit 2; }

checks=0
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
shown=""
# expect JSON FILTER VALUE: `jq -r FILTER` of JSON prints VALUE.
expect() {
  local actual
  if [[ -n "${SHOW_ANSWERS:-}" && "$1" != "$shown" ]]; then shown=$1 && printf '%s\n' "$1"; fi
  actual=$(jq -r "$2" <<<"$1") || fail "not JSON: $1"
  [[ "$actual" == "$3" ]] || fail "$2 is '$actual', not '$3', in: $1"
  checks=$((checks + 1))
}
# expect_id ID: a UUID (an id that `jq -r` found, not "null").
expect_id() {
  [[ "$1" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]] || fail "not an id: '$1'"
  checks=$((checks + 1))
}
expect_token() {
  [[ "$1" == ey*.*.* ]] || fail "not an access token: '$1'"
  checks=$((checks + 1))
}
# refused OUTPUT CODE REASON: grpcurl's error output, with that code and ErrorInfo reason.
refused() {
  grep -q "Code: $2\$" <<<"$1" && grep -q "\"reason\":\"$3\"" <<<"$1" ||
    fail "expected $2 $3, got: $1"
  checks=$((checks + 1))
}

# Grace's WatchEvents stream runs in the background in the last part; end it with the script.
EVENTS=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$EVENTS"' EXIT

G=.venv/bin/grpcurl AUTH=localhost:${AUTH_PORT:-50051} WALLET=localhost:${WALLET_PORT:-50052}

##############################################################################################
step "README.md: Try it with grpcurl"

OUT=$($G -plaintext $AUTH list)
grep -qx auth.v1.AuthService <<<"$OUT" || fail "auth does not list its service: $OUT"
OUT=$($G -plaintext $WALLET list)
grep -qx wallet.v1.WalletService <<<"$OUT" || fail "wallet does not list its service: $OUT"
OUT=$($G -plaintext -d '{"service": ""}' $WALLET grpc.health.v1.Health/Check)
expect "$OUT" .status SERVING

PAYMENTS_ACCOUNT=$(make -s service-account NAME=payments SCOPES=wallet:credit FORMAT=json)
expect "$PAYMENTS_ACCOUNT" '.client_id | startswith("svc_")' true
PAYMENTS=$($G -plaintext -d "$PAYMENTS_ACCOUNT" $AUTH auth.v1.AuthService/IssueServiceToken | jq -r .access_token)
expect_token "$PAYMENTS"

RUN=$(date +%s)
OUT=$($G -plaintext -d "{\"email\": \"ada-$RUN@example.com\", \"password\": \"correct horse battery staple\", \"display_name\": \"Ada\"}" \
  $AUTH auth.v1.AuthService/Register)
expect "$OUT" .user.email "ada-$RUN@example.com"
OUT=$($G -plaintext -d "{\"email\": \"grace-$RUN@example.com\", \"password\": \"correct horse battery staple\", \"display_name\": \"Grace\"}" \
  $AUTH auth.v1.AuthService/Register)
expect "$OUT" .user.display_name Grace
ADA=$($G -plaintext -d "{\"email\": \"ada-$RUN@example.com\", \"password\": \"correct horse battery staple\"}" \
  $AUTH auth.v1.AuthService/Login | jq -r .tokens.access_token)
expect_token "$ADA"
GRACE=$($G -plaintext -d "{\"email\": \"grace-$RUN@example.com\", \"password\": \"correct horse battery staple\"}" \
  $AUTH auth.v1.AuthService/Login | jq -r .tokens.access_token)
expect_token "$GRACE"
OUT=$($G -plaintext -H "authorization: Bearer $ADA" $AUTH auth.v1.AuthService/GetMe)
expect "$OUT" .user.display_name Ada

ADA_WALLET=$($G -plaintext -H "authorization: Bearer $ADA" -d '{"currency": "EUR"}' \
  $WALLET wallet.v1.WalletService/CreateWallet | jq -r .wallet.id)
expect_id "$ADA_WALLET"
GRACE_WALLET=$($G -plaintext -H "authorization: Bearer $GRACE" -d '{"currency": "EUR"}' \
  $WALLET wallet.v1.WalletService/CreateWallet | jq -r .wallet.id)
expect_id "$GRACE_WALLET"

OUT=$($G -plaintext -H "authorization: Bearer $PAYMENTS" \
  -d "{\"wallet_id\": \"$ADA_WALLET\", \"amount\": 10000, \"idempotency_key\": \"deposit-0001\", \"reference\": \"card top-up\"}" \
  $WALLET wallet.v1.WalletService/Credit)
expect "$OUT" .transaction.type TRANSACTION_TYPE_CREDIT
expect "$OUT" .transaction.amount 10000
expect "$OUT" .balance_after null # the payments service may not read Ada's wallet

OUT=$($G -plaintext -H "authorization: Bearer $ADA" \
  -d "{\"wallet_id\": \"$ADA_WALLET\", \"amount\": 2500, \"idempotency_key\": \"coffee-2026-11-24\"}" \
  $WALLET wallet.v1.WalletService/Debit)
expect "$OUT" .balance_after 7500
for attempt in first retry; do
  OUT=$($G -plaintext -H "authorization: Bearer $ADA" \
    -d "{\"source_wallet_id\": \"$ADA_WALLET\", \"destination_wallet_id\": \"$GRACE_WALLET\", \"amount\": 4000, \"idempotency_key\": \"rent-share-nov\"}" \
    $WALLET wallet.v1.WalletService/Transfer)
  expect "$OUT" .transaction.type TRANSACTION_TYPE_TRANSFER
  expect "$OUT" .source_balance_after 3500
  expect "$OUT" .destination_balance_after null # Grace's balance is not Ada's business
  [[ $attempt == first ]] && TRANSFER=$(jq -r .transaction.id <<<"$OUT")
  expect "$OUT" .transaction.id "$TRANSFER" # the retry answers the same transaction
done

OUT=$($G -plaintext -H "authorization: Bearer $ADA" -d "{\"wallet_id\": \"$ADA_WALLET\", \"page_size\": 2}" \
  $WALLET wallet.v1.WalletService/ListTransactions)
expect "$OUT" '[.entries[] | "\(.transaction.type) \(.balance_change) \(.balance_after) \(.sequence)"] | join(", ")' \
  "TRANSACTION_TYPE_TRANSFER -4000 3500 3, TRANSACTION_TYPE_DEBIT -2500 7500 2"
expect "$OUT" '.next_page_token | length > 0' true

OUT=$($G -plaintext -H "authorization: Bearer $GRACE" -d "{\"wallet_id\": \"$GRACE_WALLET\"}" \
  $WALLET wallet.v1.WalletService/GetWallet)
expect "$OUT" .wallet.balance 4000
make check-invariants >/dev/null || fail "the invariants do not hold"

OUT=$($G -plaintext -H "authorization: Bearer $ADA" \
  -d "{\"wallet_id\": \"$ADA_WALLET\", \"amount\": 999999, \"idempotency_key\": \"too-much\"}" \
  $WALLET wallet.v1.WalletService/Debit 2>&1) && fail "a debit beyond the balance went through"
refused "$OUT" FailedPrecondition INSUFFICIENT_FUNDS

##############################################################################################
step "docs/holds-and-refunds.md: a checkout, step by step"

OUT=$($G -plaintext -H "authorization: Bearer $PAYMENTS" \
  -d "{\"wallet_id\": \"$ADA_WALLET\", \"amount\": 10000, \"idempotency_key\": \"deposit-0002\"}" \
  $WALLET wallet.v1.WalletService/Credit)
expect "$OUT" .transaction.amount 10000
CHECKOUT_ACCOUNT=$(make -s service-account NAME=checkout SCOPES=wallet:hold FORMAT=json)
CHECKOUT=$($G -plaintext -d "$CHECKOUT_ACCOUNT" $AUTH auth.v1.AuthService/IssueServiceToken | jq -r .access_token)
expect_token "$CHECKOUT"

OUT=$($G -plaintext -H "authorization: Bearer $CHECKOUT" -d "{\"wallet_id\": \"$ADA_WALLET\", \
    \"destination_wallet_id\": \"$GRACE_WALLET\", \"amount\": 6000, \
    \"idempotency_key\": \"order-77-auth\", \"reference\": \"order 77\"}" \
    $WALLET wallet.v1.WalletService/CreateHold)
expect "$OUT" .hold.status HOLD_STATUS_HELD
expect "$OUT" .hold.amount 6000
expect "$OUT" .hold.destination_wallet_id "$GRACE_WALLET"
expect "$OUT" .available_balance_after null # the checkout may not read Ada's wallet
HOLD=$(jq -r .hold.id <<<"$OUT")
expect_id "$HOLD"

OUT=$($G -plaintext -H "authorization: Bearer $ADA" -d "{\"wallet_id\": \"$ADA_WALLET\"}" \
    $WALLET wallet.v1.WalletService/GetWallet)
expect "$OUT" '"\(.wallet.balance) \(.wallet.available_balance)"' "13500 7500"

OUT=$($G -plaintext -H "authorization: Bearer $CHECKOUT" \
    -d "{\"hold_id\": \"$HOLD\", \"amount\": 4500, \"idempotency_key\": \"order-77-capture\"}" \
    $WALLET wallet.v1.WalletService/CaptureHold)
expect "$OUT" .hold.status HOLD_STATUS_CAPTURED
expect "$OUT" .hold.captured_amount 4500
expect "$OUT" .transaction.type TRANSACTION_TYPE_CAPTURE
expect "$OUT" .transaction.hold_id "$HOLD"
expect "$OUT" .hold.capture_transaction_id "$(jq -r .transaction.id <<<"$OUT")"
CAPTURE=$(jq -r .transaction.id <<<"$OUT")

OUT=$($G -plaintext -H "authorization: Bearer $GRACE" -d "{\"transaction_id\": \"$CAPTURE\", \
    \"amount\": 1500, \"idempotency_key\": \"order-77-return\", \"reference\": \"one item returned\"}" \
    $WALLET wallet.v1.WalletService/RefundTransaction)
expect "$OUT" .refund.type TRANSACTION_TYPE_REFUND
expect "$OUT" .refund.amount 1500
expect "$OUT" .refund.refunded_transaction_id "$CAPTURE"
expect "$OUT" .original.refunded_amount 1500
expect "$OUT" .source_balance_after 7000 # Grace's, who paid it back

TAXI=$($G -plaintext -H "authorization: Bearer $ADA" \
    -d "{\"wallet_id\": \"$ADA_WALLET\", \"amount\": 3500, \"idempotency_key\": \"taxi-auth\"}" \
    $WALLET wallet.v1.WalletService/CreateHold | jq -r .hold.id)
expect_id "$TAXI"
OUT=$($G -plaintext -H "authorization: Bearer $ADA" \
    -d "{\"hold_id\": \"$TAXI\", \"idempotency_key\": \"taxi-cancel\"}" \
    $WALLET wallet.v1.WalletService/VoidHold)
expect "$OUT" .hold.status HOLD_STATUS_VOIDED
expect "$OUT" .available_balance_after 10500
OUT=$($G -plaintext -H "authorization: Bearer $ADA" \
    -d "{\"hold_id\": \"$TAXI\", \"idempotency_key\": \"taxi-capture\"}" \
    $WALLET wallet.v1.WalletService/CaptureHold 2>&1) && fail "a voided hold was captured"
refused "$OUT" FailedPrecondition HOLD_VOIDED

OUT=$($G -plaintext -H "authorization: Bearer $ADA" -d "{\"wallet_id\": \"$ADA_WALLET\", \"page_size\": 3}" \
    $WALLET wallet.v1.WalletService/ListTransactions | \
    jq -c '.entries[] | {type: .transaction.type, change: .balance_change, after: .balance_after, seq: .sequence}')
[[ "$OUT" == '{"type":"TRANSACTION_TYPE_REFUND","change":"1500","after":"10500","seq":"6"}
{"type":"TRANSACTION_TYPE_CAPTURE","change":"-4500","after":"9000","seq":"5"}
{"type":"TRANSACTION_TYPE_CREDIT","change":"10000","after":"13500","seq":"4"}' ]] || fail "Ada's statement: $OUT"
checks=$((checks + 1))

##############################################################################################
step "docs/batches-events-status.md: a batch, events, a balance in the past, a freeze"

OPS_ACCOUNT=$(make -s service-account NAME=ops SCOPES=wallet:admin FORMAT=json)
OPS=$($G -plaintext -d "$OPS_ACCOUNT" $AUTH auth.v1.AuthService/IssueServiceToken | jq -r .access_token)
expect_token "$OPS"

# Grace follows her wallets' events. A stream starts "from now" once the server has read where
# now is; its first message, a heartbeat, says it has.
$G -plaintext -H "authorization: Bearer $GRACE" -d '{}' -max-time 60 \
  $WALLET wallet.v1.WalletService/WatchEvents >"$EVENTS" &
echo "waiting for the first heartbeat of Grace's stream"
for _ in $(seq 600); do grep -q heartbeat "$EVENTS" && break; sleep 0.1; done
grep -q heartbeat "$EVENTS" || fail "Grace's stream sent no heartbeat within a minute"

BEFORE_PAYOUT=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
OUT=$($G -plaintext -H "authorization: Bearer $ADA" -d "{\"idempotency_key\": \"payout-78\", \"movements\": [ \
    {\"transfer\": {\"source_wallet_id\": \"$ADA_WALLET\", \"destination_wallet_id\": \"$GRACE_WALLET\", \
                    \"amount\": 3000, \"reference\": \"order 78\", \"metadata\": {\"order\": \"78\"}}}, \
    {\"debit\": {\"wallet_id\": \"$ADA_WALLET\", \"amount\": 500, \"reference\": \"fee\"}}]}" \
    $WALLET wallet.v1.WalletService/ExecuteBatch)
expect "$OUT" '[.transactions[] | "\(.type) \(.amount) \(.reference)"] | join(", ")' \
  "TRANSACTION_TYPE_TRANSFER 3000 order 78, TRANSACTION_TYPE_DEBIT 500 fee"
expect "$OUT" '.transactions[0].metadata.order' 78
expect "$OUT" '.transactions[1].batch_index' 1
expect "$OUT" '[.balances_after[] | "\(.wallet_id) \(.balance_after)"] | join(", ")' "$ADA_WALLET 7000"
PAYOUT=$(jq -r '.transactions[0].id' <<<"$OUT")

# Grace's terminal shows the transfer, as an entry of her own wallet, without Ada's reference.
for _ in $(seq 300); do grep -q "$PAYOUT" "$EVENTS" && break; sleep 0.1; done
OUT=$(jq -c --arg id "$PAYOUT" 'select(.event.entry.transaction.id == $id)' "$EVENTS")
expect "$OUT" .event.type EVENT_TYPE_TRANSACTION_POSTED
expect "$OUT" .event.wallet_id "$GRACE_WALLET"
expect "$OUT" '"\(.event.entry.balance_change) \(.event.entry.balance_after) \(.event.entry.sequence)"' "3000 10000 4"
expect "$OUT" .event.entry.transaction.reference null
expect "$OUT" '.event.cursor | length > 0' true

OUT=$($G -plaintext -H "authorization: Bearer $ADA" \
    -d "{\"wallet_id\": \"$ADA_WALLET\", \"time\": \"$BEFORE_PAYOUT\"}" \
    $WALLET wallet.v1.WalletService/GetBalanceAt)
expect "$OUT" '"\(.balance) \(.sequence)"' "10500 6"
OUT=$($G -plaintext -H "authorization: Bearer $ADA" \
    -d "{\"wallet_id\": \"$ADA_WALLET\", \"metadata_key\": \"order\", \"metadata_value\": \"78\"}" \
    $WALLET wallet.v1.WalletService/ListTransactions | jq -c '.entries[] | {type: .transaction.type, change: .balance_change}')
[[ "$OUT" == '{"type":"TRANSACTION_TYPE_TRANSFER","change":"-3000"}' ]] || fail "the search by metadata: $OUT"
checks=$((checks + 1))

OUT=$($G -plaintext -H "authorization: Bearer $OPS" -d "{\"wallet_id\": \"$ADA_WALLET\", \
    \"status\": \"WALLET_STATUS_DEBITS_FROZEN\", \"reason\": \"chargeback review 1234\"}" \
    $WALLET wallet.v1.WalletService/UpdateWalletStatus)
expect "$OUT" '"\(.wallet.balance) \(.wallet.status) \(.wallet.status_reason)"' \
  "7000 WALLET_STATUS_DEBITS_FROZEN chargeback review 1234"
OUT=$($G -plaintext -H "authorization: Bearer $ADA" \
    -d "{\"wallet_id\": \"$ADA_WALLET\", \"amount\": 100, \"idempotency_key\": \"coffee-1\"}" \
    $WALLET wallet.v1.WalletService/Debit 2>&1) && fail "a debit left a frozen wallet"
refused "$OUT" FailedPrecondition WALLET_FROZEN

make check-invariants >/dev/null || fail "the invariants do not hold"
printf '\nwalkthrough: %d checks passed\n' "$checks"
