"""Who may do what with a wallet (SPEC: a user acts on its own wallets; `wallet:credit` may
credit any wallet; `wallet:admin` may act on any wallet)."""

from shared.tokens import Principal

from shared.errors import permission_denied
from wallet_service.models import Wallet

CREDIT_SCOPE = "wallet:credit"
ADMIN_SCOPE = "wallet:admin"


def can_use(principal: Principal, wallet: Wallet) -> bool:
    """Read it, debit it, transfer out of it, list its history."""
    return wallet.user_id == principal.subject or principal.has_scope(ADMIN_SCOPE)


def require_credit_scope(principal: Principal) -> None:
    if not (principal.has_scope(CREDIT_SCOPE) or principal.has_scope(ADMIN_SCOPE)):
        raise permission_denied(
            "MISSING_SCOPE", f"crediting needs the {CREDIT_SCOPE} scope", scope=CREDIT_SCOPE
        )
