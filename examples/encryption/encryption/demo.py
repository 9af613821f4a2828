"""`python -m encryption.demo`: onboard two customers, and show what the Resonate server holds.

The demo is a client with the same key ring as the workers (ENCRYPTION_KEYS, ENCRYPTION_KEYS_FILE
or the development one): it sends a customer's personal data and reads the outcome in plaintext.
Then it reads the same execution as the server holds it, through a client that opens nothing,
and through a client with a wrong key.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from resonate.resonate import Resonate
from resonate.types import PromiseRecord

from encryption.crypto import (
    FORMAT_VERSION,
    AesGcmEncryptor,
    DecryptionError,
    KeyRing,
    load_key_ring,
)

ADA = {
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "address": "12 St James's Square, London",
    "card_fingerprint": "fp_9c1f2e7a4b6d",
}
# An hour in production; a second here, so the demo need not wait.
WELCOME_DELAY_SECONDS = 1


class SealedView:
    """An encryptor that opens nothing: it describes each stored value as the server holds it."""

    def encrypt(self, data: bytes) -> bytes:
        raise NotImplementedError("a view never writes")

    def decrypt(self, data: bytes) -> bytes:
        if len(data) > 2 and data[0] == FORMAT_VERSION:
            key_id = data[2 : 2 + data[1]].decode(errors="replace")
            shown = f"<{len(data)} bytes sealed with key {key_id!r}>"
        else:
            shown = f"<{len(data)} bytes NOT sealed: {data[:40]!r}>"
        return b'"' + shown.encode() + b'"'


async def main() -> None:
    url = os.environ["RESONATE_URL"]
    # A client, not a worker: it joins its own group so it is never handed workflow work.
    key_ring = load_key_ring()
    print(f"· the demo's key ring: {key_ring.source}")
    resonate = Resonate(url=url, group="encryption-clients", encryptor=AesGcmEncryptor(key_ring))
    view = Resonate(url=url, group="encryption-clients", encryptor=SealedView())
    try:
        # The execution id is the customer's account reference, chosen so that it says nothing
        # about them: ids and tags are stored in plaintext (the server routes by them).
        ada_id = f"onboarding-{secrets.token_hex(4)}"
        print(f"1. Onboard Ada as execution {ada_id} (what the client sends and reads back)")
        handle = resonate.options(target="encryption").rpc(
            ada_id, "onboard", ADA, WELCOME_DELAY_SECONDS
        )
        result = await handle.result()
        print(f"✓ {result['status']}: {result['customer']}")
        print(f"  verification {result['verification']}, welcome email {result['welcome_email']}")

        print("\n2. The same execution as the Resonate server holds it")
        show(await view.promises.get(ada_id))

        bad_id = f"onboarding-{secrets.token_hex(4)}"
        print(f"\n3. A customer record with a malformed email, as execution {bad_id}")
        try:
            bad = {**ADA, "email": "ada.example.com"}
            await resonate.options(target="encryption").rpc(bad_id, "onboard", bad, 1).result()
        except Exception as exc:
            print(f"✗ the client reads the error: {type(exc).__name__}: {exc}")
        show(await view.promises.get(bad_id))

        print("\n4. Ada's execution read with a wrong key (the right key id, other bytes)")
        await read_with(url, KeyRing.new(key_ring.current), ada_id)

        rotated = key_ring.rotated("demo-rotated")
        print(f"\n5. ... and with the key ring rotated to a new key {rotated.current!r}")
        await read_with(url, rotated, ada_id)
    finally:
        await view.stop()
        await resonate.stop()


async def read_with(url: str, key_ring: KeyRing, execution_id: str) -> None:
    client = Resonate(url=url, group="encryption-clients", encryptor=AesGcmEncryptor(key_ring))
    try:
        result = await (await client.get(execution_id)).result()
        print(f"✓ it opens: {result['customer']['name']}, {result['status']}")
    except DecryptionError as exc:
        print(f"✗ DecryptionError: {exc}")
    finally:
        await client.stop()


def show(record: PromiseRecord) -> None:
    print(f"  id     {record.id}  (plaintext: the server routes by it)")
    print(f"  state  {record.state}")
    print(f"  param  {record.param.data}")
    print(f"  value  {record.value.data}")
    print(f"  tags   {len(record.tags)}, e.g. resonate:target={record.tags['resonate:target']}")


if __name__ == "__main__":
    asyncio.run(main())
