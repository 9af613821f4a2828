"""`python -m distributed_calculator.demo`: calculate four expressions on the two pools.

Exact decimals, an answer that is a fraction, a division by zero (a value, not a failure), and a
malformed expression refused before anything is started.
"""

from __future__ import annotations

import asyncio
import os
import time

from resonate.resonate import Resonate

from distributed_calculator.expression import MalformedExpressionError, parse
from distributed_calculator.workflow import PARSE_POOL, Result

EXPRESSIONS = ("(0.1 + 0.2) * 3 / 4", "-(1 / 3) + 1 / 7", "7 / (2 - 2)", "2 * (3 + 4")


async def submit(resonate: Resonate, execution_id: str, expression: str) -> Result:
    """Parse first, so a malformed expression is refused before any promise exists."""
    parse(expression)  # raises MalformedExpressionError, naming the position
    handle = resonate.options(target=PARSE_POOL).rpc(execution_id, "calculate", expression)
    result: Result = await handle.result()
    return result


async def main() -> None:
    # A client, not a worker: it joins its own group so it is never handed work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="calculator-clients")
    run = int(time.time())
    try:
        for number, expression in enumerate(EXPRESSIONS, start=1):
            execution_id = f"calc-{run}-{number}"
            print(f"→ {expression}   (execution {execution_id})")
            try:
                result = await submit(resonate, execution_id, expression)
            except MalformedExpressionError as exc:
                print(f"✗ refused before starting: {exc}")
                print(f"    {expression}\n    {' ' * (exc.position - 1)}^")
                continue
            if "error" in result:
                print(f"✓ reported, not retried: {result['error']}")
            else:
                print(f"✓ = {result['value']}")
    finally:
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
