"""The forward path: client request -> upstream call with secrets injected -> masked response."""
