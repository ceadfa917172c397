"""ss's expression grammar: tokens to a tree of conditions; errors point at a token.

Grammar (ss's yacc file): `and`/`or` have the same precedence and group to
the left, `a or b and c` is `(a or b) and c`; `not` binds to the next
condition; juxtaposition means `and`. Nesting deeper than 200 levels is refused.
"""

from __future__ import annotations

from typing import NoReturn

from ..errors import FilterSyntaxError
from .operands import BadValue, parse_device, parse_hostcond
from .tokens import (
    AND,
    AUTOBOUND,
    CGROUP,
    DEV,
    DPORT,
    DST,
    EQ,
    FWMARK,
    GEQ,
    GT,
    LEQ,
    LPAREN,
    LT,
    NEQ,
    NOT,
    OR,
    RPAREN,
    SPORT,
    SRC,
    STARTS_CONDITION,
    STATE_WORDS,
    VALUE,
    Token,
)
from .tree import Addr, And, Autobound, Dev, Node, Not, Or, PortCmp

_MAX_DEPTH = 200  # nesting of '(' and 'not'


def parse_expression(tokens: list[Token], text: str) -> tuple[Node, int]:
    """The tree of a non-empty token list, and the family an 'inet:'/'inet6:' chose (or 0).

    Errors raise FilterSyntaxError pointing into text, the words joined by spaces.
    """
    return _Parser(tokens, text).run()


_OPERAND = {SRC: "an address", DST: "an address", SPORT: "a port", DPORT: "a port",
            DEV: "a device"}


class _Parser:
    """Recursive descent over ss's grammar (one precedence level, left to right)."""

    def __init__(self, tokens: list[Token], text: str) -> None:
        self.tokens, self.text, self.i = tokens, text, 0
        self.family = 0  # from the latest 'inet:'/'inet6:' operand; ss keeps it for the rest

    def run(self) -> tuple[Node, int]:
        tree = self.exprlist(0, None)
        tok = self.peek()
        if tok is not None:
            if tok.kind == RPAREN:
                self.fail("found ')' without a matching '('", tok)
            if tok.text in STATE_WORDS:
                self.unexpected_start(tok, None)
            self.fail(f"expected 'and', 'or' or another condition but found '{tok.text}'", tok)
        return tree, self.family

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, message: str, tok: Token | None) -> NoReturn:
        raise FilterSyntaxError(message, self.text, len(self.text) if tok is None else tok.pos)

    def found(self, tok: Token | None) -> str:
        return "the filter ended" if tok is None else f"found '{tok.text}'"

    def exprlist(self, depth: int, after: Token | None) -> Node:
        items = [self.expr(depth, after)]
        op = None
        while (tok := self.peek()) is not None:
            if tok.kind in (AND, OR):
                self.take()
                nxt, after = tok.kind, tok
            elif tok.kind in STARTS_CONDITION:
                nxt, after = AND, None
            else:
                break
            right = self.expr(depth, after)
            if op is not None and nxt != op:
                items = [(And if op == AND else Or)(tuple(items))]
            op = nxt
            items.append(right)
        if op is None:
            return items[0]
        return (And if op == AND else Or)(tuple(items))

    def expr(self, depth: int, after: Token | None) -> Node:
        if depth > _MAX_DEPTH:
            self.fail("the filter is nested too deeply", self.peek())
        tok = self.peek()
        if tok is None or tok.kind not in STARTS_CONDITION:
            self.unexpected_start(tok, after)
        tok = self.take()
        if tok.kind == LPAREN:
            inner = self.exprlist(depth + 1, tok)
            close = self.peek()
            if close is None or close.kind != RPAREN:
                what = "but the filter ended" if close is None else \
                    f"or another condition but found '{close.text}'"
                self.fail(f"expected ')' {what}", close)
            self.take()
            return inner
        if tok.kind == NOT:
            return Not(self.expr(depth + 1, tok))
        if tok.kind == AUTOBOUND:
            return Autobound()
        if tok.kind in (FWMARK, CGROUP):
            self.fail(f"'{tok.text}' conditions are not supported by sockdoctor", tok)
        return self.condition(tok)

    def unexpected_start(self, tok: Token | None, after: Token | None) -> NoReturn:
        if tok is not None and tok.text in STATE_WORDS:
            self.fail(f"'{tok.text}' must come first, as a word of its own, before any "
                      "condition", tok)
        if tok is not None and tok.kind == RPAREN and after is None:
            self.fail("found ')' without a matching '('", tok)
        if tok is not None and tok.kind == RPAREN and after.kind == LPAREN:
            self.fail("expected a condition inside '( )' but found ')'", tok)
        where = f" after '{after.text}'" if after is not None else ""
        self.fail(f"expected a condition{where} but {self.found(tok)}", tok)

    def condition(self, kw: Token) -> Node:
        op_tok = self.peek()
        op = op_tok.kind if op_tok is not None and op_tok.kind in (
            EQ, NEQ, GEQ, LEQ, GT, LT) else None
        allowed = {SRC: (EQ,), DST: (EQ,), DEV: (EQ, NEQ)}.get(kw.kind,
                                                               (EQ, NEQ, GEQ, LEQ, GT, LT))
        if op is not None:
            if op not in allowed:
                hint = f"; write 'not {kw.text} ...' instead" if op == NEQ else ""
                self.fail(f"'{op_tok.text}' cannot follow '{kw.text}'{hint}", op_tok)
            self.take()
        value = self.peek()
        if value is None or value.kind != VALUE:
            spelled = f"{kw.text} {op_tok.text}" if op is not None else kw.text
            self.fail(f"expected {_OPERAND[kw.kind]} after '{spelled}' but "
                      f"{self.found(value)}", value)
        self.take()
        try:
            return self.build(kw.kind, op, value.text)
        except BadValue as exc:
            message = str(exc)
        raise FilterSyntaxError(message, self.text, value.pos)

    def build(self, kind: str, op: str | None, text: str) -> Node:
        if kind == DEV:
            node: Node = Dev(parse_device(text), text)
            return Not(node) if op == NEQ else node
        is_port = kind in (SPORT, DPORT)
        cond = parse_hostcond(text, is_port, self.family)
        if cond.family:
            self.family = cond.family
        side = SRC if kind in (SRC, SPORT) else DST
        if op in (None, EQ):
            return Addr(side, cond, text, is_port)
        if op == NEQ:
            return Not(Addr(side, cond, text, is_port))
        if op in (GEQ, LEQ):
            return PortCmp(side, op, cond.port, text)
        return Not(PortCmp(side, LEQ if op == GT else GEQ, cond.port, text))
