"""An OpenAI-compatible API into Parley rooms (/v1/; docs/protocol.md "OpenAI-compatible
API"): every OpenAI client is a Parley client.

A model is a room's assistant (``parley/<slug>`` or ``parley/<slug>/<handle>``); a chat
completion or response posts the request's last user message to the room through the
same send service as every other transport, and streams the reply from the room's own
events. A response id is the reply's message id (``resp_<id>``), and its stream's
``sequence_number`` the room's seq, so ``starting_after`` resumes it like any member.
"""
