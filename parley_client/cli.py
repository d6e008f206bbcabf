"""``parley-chat`` / ``python -m parley_client``: arguments, the room picker, exit codes.

Whatever goes wrong ends in one line on stderr (``parley-chat: ...``), never a traceback,
and an exit code that says what kind of failure it was.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from parley_client.client import Client
from parley_client.errors import (
    NotFound,
    NotMember,
    ParleyError,
    Unauthorized,
    Unreachable,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4
EXIT_NO_ROOM = 5

DEFAULT_URL = "http://127.0.0.1:8000"

EPILOG = f"""\
The token can also come from PARLEY_TOKEN, the URL from PARLEY_URL. Without ROOM the chat
lists your rooms to pick from. Inside, /help lists the commands.

Exit codes: {EXIT_OK} done, {EXIT_ERROR} other failure, {EXIT_USAGE} usage, \
{EXIT_UNREACHABLE} server unreachable, {EXIT_UNAUTHORIZED} token refused, \
{EXIT_NO_ROOM} no such room or not yours."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parley-chat",
        description="Chat in a Parley room from the terminal.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("room", nargs="?", help="the room's slug (omit to pick from a list)")
    p.add_argument("--url", default=os.environ.get("PARLEY_URL", DEFAULT_URL), help="server URL")
    p.add_argument("--token", default=os.environ.get("PARLEY_TOKEN"), help="API token")
    p.add_argument(
        "--transport",
        choices=("auto", "websocket", "sse"),
        default="auto",
        help="auto (default): the WebSocket, or SSE + HTTP where it is blocked",
    )
    p.add_argument("--join", action="store_true", help="join ROOM if it is public")
    p.add_argument("--history", type=int, default=10, help="messages shown on joining")
    return p


def exit_code(error: ParleyError) -> int:
    if isinstance(error, Unreachable):
        return EXIT_UNREACHABLE
    if isinstance(error, Unauthorized):
        return EXIT_UNAUTHORIZED
    if isinstance(error, NotMember | NotFound):
        return EXIT_NO_ROOM
    return EXIT_ERROR


def explain(error: ParleyError, args: argparse.Namespace) -> str:
    if isinstance(error, NotMember):
        return f"you are not a member of room {args.room!r} (it is public: pass --join to join it)"
    if isinstance(error, NotFound) and args.room:
        return f"no room {args.room!r} that you can see (private rooms show only to members)"
    if isinstance(error, Unauthorized):
        return f"{args.url} refused the token (wrong or revoked?)"
    return str(error)


async def pick_room(client: Client) -> str | None:
    rooms = await client.rooms()
    if not rooms:
        print("You can see no rooms yet. Create one on the web page.")
        return None
    print("Rooms:")
    for r in rooms:
        print(f"  {r.slug:<24} {r.name} · {r.visibility} · owner {r.owner}")
    if not sys.stdin.isatty():
        return None
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter

    slugs = [r.slug for r in rooms]
    session: PromptSession[str] = PromptSession()
    try:
        choice = await session.prompt_async("room> ", completer=WordCompleter(slugs))
    except (EOFError, KeyboardInterrupt):
        return None
    return choice.strip() or None


async def amain(args: argparse.Namespace) -> int:
    try:
        from parley_client.chat import ChatApp
    except ImportError as exc:
        print(f"parley-chat: {exc.name} is missing: pip install prompt_toolkit", file=sys.stderr)
        return EXIT_ERROR
    async with Client(args.url, token=args.token, transport=args.transport) as client:
        room = args.room or await pick_room(client)
        if room is None:
            return EXIT_OK
        args.room = room
        app = ChatApp(client, room, transport=args.transport, join=args.join, history=args.history)
        return await app.run()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.token:
        print("parley-chat: no token: pass --token or set PARLEY_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(amain(args))
    except ParleyError as exc:
        print(f"parley-chat: {explain(exc, args)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_OK
