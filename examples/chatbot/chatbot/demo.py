"""`python -m chatbot.demo`: a short chat through the gateway, told turn by turn.

Turn 1 is answered. For turn 2 the model is made to answer 503 twice (overloaded mid-turn): the
turn's retry policy asks it again, with the same messages and the same idempotency key, and the
user gets the answer in the same request, billed once. Turn 2 is then sent again (a double click):
it attaches to the same execution and gets the same answer, billed nothing more. A turn sent out of
order is refused with 409. Every count comes from the model's own billing records (the sandbox).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import httpx

from chatbot.workflow import turn_id


def send(gateway: httpx.Client, chat_id: str, turn: int, message: str) -> httpx.Response:
    print(f'→ POST /chats/{chat_id}/turns  turn {turn}: "{message}"')
    response = gateway.post(f"/chats/{chat_id}/turns", json={"turn": turn, "message": message})
    body: dict[str, Any] = response.json()
    match response.status_code, body.get("status"):
        case 200, "answered":
            print(f'← 200 answered: "{body["reply"]}"')
        case 200, status:
            print(f"← 200 {status}: {body.get('reason')}")
        case 202, _:
            print(f"← 202 still being answered: GET {body['status_url']}")
        case code, _:
            print(f"← {code}: {body['detail']}")
    return response


def model_calls(providers: str, key_prefix: str) -> tuple[list[int], int]:
    """What the model saw for these keys: each attempt's status, and the completions billed."""
    attempts = httpx.get(
        f"{providers}/_admin/requests", params={"key_prefix": key_prefix}
    ).raise_for_status()
    billed = httpx.get(
        f"{providers}/_admin/effects", params={"key_prefix": key_prefix}
    ).raise_for_status()
    model_attempts = [r["status_code"] for r in attempts.json() if r["provider"] == "model"]
    return model_attempts, sum(1 for e in billed.json() if e["provider"] == "model")


def main() -> None:
    providers = os.environ["PROVIDER_API_URL"]
    chat_id = f"demo-{secrets.token_hex(3)}"
    print(f"· chat {chat_id} with the model {os.environ.get('OPENAI_MODEL', '?')}")
    # A model turn can take seconds; the gateway answers within ANSWER_WITHIN_SECONDS (10 s).
    with httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=30) as gateway:
        send(gateway, chat_id, 1, "Hi, I'm Ada. I'm looking for a book about durable execution.")
        print()
        print("· make the model answer 503 Service Unavailable to the next two attempts of turn 2")
        httpx.post(
            f"{providers}/_admin/faults",
            json={
                "provider": "model",
                "action": "complete",
                "mode": "fail_times",
                "times": 2,
                "status": 503,
                "key_prefix": f"{turn_id(chat_id, 2)}:",
            },
        ).raise_for_status()
        send(gateway, chat_id, 2, "Which one would you recommend, and what was my name again?")
        attempts, billed = model_calls(providers, f"{turn_id(chat_id, 2)}:")
        print(
            f"  the model was asked {len(attempts)} times for turn 2 "
            f"({', '.join(map(str, attempts))}): retried by the turn's policy, "
            f"the user sent it once; completions billed: {billed}"
        )
        print()
        print("· send turn 2 again, as a double click would")
        send(gateway, chat_id, 2, "Which one would you recommend, and what was my name again?")
        attempts, billed = model_calls(providers, f"{turn_id(chat_id, 2)}:")
        print(
            f"  the same execution, the same answer: the model asked {len(attempts)} times, "
            f"billed {billed}"
        )
        print()
        print("· skip a turn")
        send(gateway, chat_id, 4, "And is it in stock?")
        send(gateway, chat_id, 3, "Is it in stock?")
        _, billed = model_calls(providers, f"chat.{chat_id}.")
        print()
        print(f"✓ 3 turns answered, {billed} completions billed for chat {chat_id}")


if __name__ == "__main__":
    main()
