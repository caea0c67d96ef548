"""wallet.v1.WalletService: wallets, money movements, the ledger and its history."""
