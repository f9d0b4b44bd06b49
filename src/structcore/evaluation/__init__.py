"""The paper's evaluation (Tables 2-3, 5-12) on MVTec AD, VisA or plain folders."""
