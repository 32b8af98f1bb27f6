"""The embedded HTTP/1.1 responder: pure parsing, prebuilt replies, the connection.

parse.py reads request heads (no I/O); replies.py prebuilds every answer as bytes
per state; connection.py is the asyncio.Protocol that ties them together.
"""
