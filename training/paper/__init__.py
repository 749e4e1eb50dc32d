"""Paper trading of exported (ONNX) policies: feeds, the crash-safe SQLite ledger, the loop, the view.

Runtime dependencies are numpy/scipy/pandas (the env), onnxruntime, sqlite3, rich and mlflow: never
torch or stable-baselines3, and no pickle (see docs/paper_trading.md).
"""
