"""Parse an arithmetic expression into a tree of plain JSON data, or refuse it naming the position.

Python's own parser does the grammar (precedence, parentheses, unary minus), and a strict whitelist
decides what is allowed: numbers written as integers or decimals, `+ - * /`, parentheses.
Nothing is ever evaluated here, and `eval` is never called: a name, a call, `**`, `//`, an
exponent or any other character is refused before a single promise exists.

A number is kept as the exact fraction its digits denote (`0.1` is 1/10, not the float nearest to
it), written as a string, because the tree and every intermediate result travel through the
server as JSON.
"""

from __future__ import annotations

import ast
from fractions import Fraction
from typing import Any

# A node is JSON: {"text": "0.1", "number": "1/10"} or
# {"text": "3 / (2 - 2)", "op": "/", "operands": [node, node]} (unary minus has one operand).
type Node = dict[str, Any]

MAX_LENGTH = 200  # characters: an expression is typed by a person, and every operator is a task
ALLOWED_CHARACTERS = frozenset("0123456789. +-*/()")
BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class MalformedExpressionError(ValueError):
    """The expression is not one this calculator accepts; `position` counts from 1."""

    def __init__(self, expression: str, position: int, reason: str) -> None:
        # The constructor's own arguments, so pickle can rebuild the error: that is how the SDK
        # carries it across a promise to whoever awaits the workflow (with any other `args`,
        # unpickling fails and the awaiter gets a bare ApplicationError, with no `position`).
        super().__init__(expression, position, reason)
        self.expression = expression
        self.position = position
        self.reason = reason

    def __str__(self) -> str:
        return f"malformed expression at position {self.position}: {self.reason}"


def parse(expression: str) -> Node:
    if not isinstance(expression, str):
        raise MalformedExpressionError(str(expression), 1, "the expression must be a string")
    if len(expression) > MAX_LENGTH:
        raise MalformedExpressionError(
            expression, MAX_LENGTH + 1, f"longer than {MAX_LENGTH} characters"
        )
    for index, character in enumerate(expression):
        if character not in ALLOWED_CHARACTERS:
            raise MalformedExpressionError(
                expression, index + 1, f"unexpected character {character!r}"
            )
    if not expression.strip():
        raise MalformedExpressionError(expression, 1, "the expression is empty")
    _check_parentheses(expression)
    body = expression.rstrip(" ")
    if body[-1] in "+-*/":
        raise MalformedExpressionError(expression, len(body), f"nothing after {body[-1]!r}")
    # Leading spaces would be an "unexpected indent" to Python: parse without them, and add them
    # back to every position reported.
    source = expression.lstrip(" ")
    shift = len(expression) - len(source)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        position = min((exc.offset or 1) + shift, len(expression))
        reason = "invalid syntax"
        if exc.msg.startswith("leading zeros"):
            reason = "a number may not start with 0 (write 7, not 07)"
        raise MalformedExpressionError(expression, position, reason) from None
    return _Reader(expression, shift).node(tree.body)


def _check_parentheses(expression: str) -> None:
    opened: list[int] = []
    for index, character in enumerate(expression):
        if character == "(":
            opened.append(index + 1)
        elif character == ")":
            if not opened:
                raise MalformedExpressionError(expression, index + 1, "unmatched ')'")
            opened.pop()
    if opened:
        raise MalformedExpressionError(expression, opened[-1], "'(' is never closed")


class _Reader:
    """Turns the whitelisted part of Python's syntax tree into a `Node`; refuses the rest."""

    def __init__(self, expression: str, shift: int) -> None:
        self.expression = expression
        self.shift = shift  # the leading spaces left out of what Python parsed

    def node(self, node: ast.expr) -> Node:
        text = self.text(node)
        match node:
            case ast.Constant(value=int() | float()) if not isinstance(node.value, bool):
                return {"text": text, "number": str(Fraction(text))}
            case ast.UnaryOp(op=ast.UAdd(), operand=operand):
                return self.node(operand)
            case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() | float())):
                return {"text": text, "number": str(Fraction(text.replace(" ", "")))}
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                return {"text": text, "op": "-", "operands": [self.node(operand)]}
            case ast.BinOp(op=op, left=left, right=right) if type(op) in BINARY:
                operands = [self.node(left), self.node(right)]
                return {"text": text, "op": BINARY[type(op)], "operands": operands}
            case ast.BinOp(op=ast.Pow() | ast.FloorDiv(), left=left):
                operator = "**" if isinstance(node.op, ast.Pow) else "//"
                at = self.expression.index(operator, self.end(left))
                reason = f"{operator!r} is not supported (only + - * /)"
                raise MalformedExpressionError(self.expression, at + 1, reason)
        reason = f"{text!r} is not a number or an arithmetic operation"
        raise MalformedExpressionError(self.expression, node.col_offset + self.shift + 1, reason)

    def text(self, node: ast.expr) -> str:
        return self.expression[node.col_offset + self.shift : self.end(node)]

    def end(self, node: ast.expr) -> int:
        return (node.end_col_offset or node.col_offset) + self.shift


def exact(value: str) -> str:
    """A fraction as a decimal when it has a finite one (`3/10` -> `0.3`), else as `1/3`."""
    fraction = Fraction(value)
    denominator, twos, fives = fraction.denominator, 0, 0
    while denominator % 2 == 0:
        denominator, twos = denominator // 2, twos + 1
    while denominator % 5 == 0:
        denominator, fives = denominator // 5, fives + 1
    if denominator != 1:
        return str(fraction)
    places = max(twos, fives)
    if places == 0:
        return str(fraction.numerator)
    scaled = abs(fraction.numerator) * 10**places // fraction.denominator
    sign = "-" if fraction < 0 else ""
    digits = str(scaled).rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}"
