"""Who may do what with a wallet (SPEC: a user acts on its own wallets; `wallet:credit` may
credit any wallet; `wallet:hold` may place holds on any wallet; `wallet:admin` may act on any
wallet)."""

from shared.errors import permission_denied
from shared.tokens import Principal
from wallet_service.models import Wallet

CREDIT_SCOPE = "wallet:credit"
HOLD_SCOPE = "wallet:hold"
EVENTS_SCOPE = "wallet:events"
ADMIN_SCOPE = "wallet:admin"


def usable_owner(principal: Principal) -> str | None:
    """Whose wallets the caller may use (read, debit, transfer out of, list the history of):
    its own, or None for any wallet (`wallet:admin`)."""
    return None if principal.has_scope(ADMIN_SCOPE) else principal.subject


def may_use_wallet_of(principal: Principal, user_id: str) -> bool:
    owner = usable_owner(principal)
    return owner is None or user_id == owner


def can_use(principal: Principal, wallet: Wallet) -> bool:
    return may_use_wallet_of(principal, wallet.user_id)


def sees_request_details(principal: Principal, requested_by: str) -> bool:
    """A movement's idempotency key and reference belong to the caller that requested it."""
    return principal.subject == requested_by or principal.has_scope(ADMIN_SCOPE)


def is_admin(principal: Principal) -> bool:
    return principal.has_scope(ADMIN_SCOPE)


def watches_every_wallet(principal: Principal) -> bool:
    """Notifications, accounting, fraud: every wallet's events, with every detail."""
    return principal.has_scope(EVENTS_SCOPE) or is_admin(principal)


def may_credit(principal: Principal) -> bool:
    """Crediting any wallet (and refunding debits, reversing credits): the payments service."""
    return principal.has_scope(CREDIT_SCOPE) or is_admin(principal)


def can_place_holds_on_any_wallet(principal: Principal) -> bool:
    """A checkout authorising a payment; anyone else places holds on its own wallets."""
    return principal.has_scope(HOLD_SCOPE) or is_admin(principal)


def require_admin_scope(principal: Principal) -> None:
    if not is_admin(principal):
        raise permission_denied(
            "MISSING_SCOPE", f"this needs the {ADMIN_SCOPE} scope", scope=ADMIN_SCOPE
        )


def require_credit_scope(principal: Principal) -> None:
    if not may_credit(principal):
        raise permission_denied(
            "MISSING_SCOPE", f"crediting needs the {CREDIT_SCOPE} scope", scope=CREDIT_SCOPE
        )
