"""The embedded HTTP/1.1 responder: pure parsing, prebuilt replies, the connection."""
