"""ISO 4217 currencies (from the `iso4217` package's copy of the official list)."""

from iso4217 import Currency

from shared.errors import invalid_argument


def normalise_currency(code: str) -> tuple[str, int]:
    """The upper-case code and its minor-unit exponent, for a currency wallets can hold.

    Codes without a minor unit (gold, SDR, the test code XTS, "no currency" XXX) are refused.
    """
    normalised = code.strip().upper()
    try:
        exponent = Currency(normalised).exponent
    except ValueError:
        exponent = None
    if exponent is None:
        raise invalid_argument(
            "UNSUPPORTED_CURRENCY", f"{code!r} is not a supported ISO 4217 currency code"
        )
    return normalised, int(exponent)


def currency_exponent(code: str) -> int:
    return normalise_currency(code)[1]
