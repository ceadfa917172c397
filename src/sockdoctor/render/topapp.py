"""`top`'s full-screen app (Textual): the groups live, keys to sort, filter and drill down.

Textual rather than rich's Live (see docs/watch.md): top needs keys, a text
field for the filter, a scrolling table with a cursor and a second screen
for a group's sockets, all of which Textual has; Live only redraws. The
sampler runs on a worker thread and hands each sample to the app.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from ..errors import SockdoctorError
from ..watch.top import Group, TopModel
from . import fmt
from .topframe import KEYS, RIGHT, cells, finding_lines, fit, fitted, status

SOCKET_COLUMNS = ("STATE", "LOCAL", "PEER", "RECV-Q", "SEND-Q", "AGE", "OWNER")


class HelpScreen(ModalScreen[None]):
    """Every key of top, one per line (topframe.KEYS)."""

    BINDINGS: ClassVar = [Binding("q,escape,question_mark,h,f1,enter", "dismiss", "Back")]
    CSS = "HelpScreen { align: center middle; } #help { width: auto; max-width: 100%; " \
          "height: auto; border: solid $accent; padding: 0 1; }"

    def compose(self) -> ComposeResult:
        text = Text("sockdoctor top: keys\n\n", style="bold")
        width = max(len(key) for key, _ in KEYS)
        for key, what in KEYS:
            text.append(f"{key:>{width}}", style="bold")
            text.append(f"  {what}\n")
        text.append("\nColumns that do not fit hide or shrink: +START, RECV-Q, then NETNS,\n"
                    "PROCESS and SERVICE shrink, then +LAST (docs/watch.md).", style="dim")
        yield Static(text, id="help")


class GroupsTable(DataTable):
    """The groups; Enter (open a group) is shown in the footer, as DataTable hides it."""

    BINDINGS: ClassVar = [Binding("enter", "select_cursor", "Sockets")]


class SocketsScreen(ModalScreen[None]):
    """The sockets of one group (the first 500)."""

    BINDINGS: ClassVar = [Binding("q,enter,escape", "dismiss", "Back")]

    def __init__(self, g: Group, age_ms: Any) -> None:
        super().__init__()
        self.group, self.age_ms = g, age_ms

    def compose(self) -> ComposeResult:
        g = self.group
        yield Static(Text(f"{g.count} sockets: {g.state_name} {g.process} "
                          f"{fmt.untrusted(g.service)}  [netns {fmt.untrusted(g.netns_name)}]",
                          style="bold"))
        table: DataTable = DataTable(id="sockets", cursor_type="row")
        table.add_columns(*SOCKET_COLUMNS)
        for sk in g.sockets[:500]:
            owners = ",".join(f"{o.pid}/fd{o.fd}" for o in sk.owners) or sk.owner_note()
            table.add_row(fmt.state_name(sk.state),
                          fmt.endpoint(sk.local_addr, sk.local_port, sk.family),
                          fmt.endpoint(sk.peer_addr, sk.peer_port, sk.family, peer=True),
                          str(sk.recv_q), str(sk.send_q), fmt.duration(self.age_ms(sk)), owners)
        # (the sampler's age_ms gives a listener no age: it waits for nothing)
        yield table
        if g.counted:  # a grouped refresh (Sampler.group_in_kernel) counted them, unlisted
            yield Static(Text(f"{g.counted} of them counted in the kernel: listed on the "
                              "next full sample"))
        yield Footer()


class TopApp(App[int]):
    """Rows of groups, a status line, the doctor's findings; the sampler feeds it."""

    CSS = """
    #status { height: 1; }
    #groups { height: 1fr; }
    #findings { height: auto; max-height: 33%; border-top: solid $accent;
                text-wrap: nowrap; text-overflow: ellipsis; }
    #findings.hidden { display: none; }
    #filter { display: none; }
    #filter.shown { display: block; }
    #message { height: auto; }
    """
    BINDINGS: ClassVar = [
        Binding("q", "quit_top", "Quit"),
        Binding("question_mark,h,f1", "help", "Help", key_display="?"),
        Binding("c", "sort('count')", "Sort count"),
        Binding("g", "sort('growth')", "Sort growth"),
        Binding("a", "sort('age')", "Sort age"),
        Binding("slash,f", "edit_filter", "Filter"),
        Binding("r", "relief", "Relief cmd"),
        Binding("d", "findings", "Findings"),
        Binding("escape", "back", "Back", show=False, priority=True),
    ]

    def __init__(self, model: TopModel, sampler: Any, refresh_s: float) -> None:
        super().__init__()
        self.model, self.sampler, self.refresh_s = model, sampler, refresh_s
        self.printed: list[str] = []  # relief commands shown, printed again on exit
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield GroupsTable(id="groups", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="filter, as ss: state close-wait sport = :8000  (Enter applies, "
                                "empty clears, Esc cancels)", id="filter")
        yield Static(id="message")
        yield Static(id="findings")
        yield Footer()

    def on_mount(self) -> None:
        self._show()
        self.run_worker(self._sample_loop, thread=True, exclusive=True)

    def _sample_loop(self) -> None:
        if self._stop.wait(self.refresh_s):  # the first sample was taken before the app
            return
        self.sampler.run(self._stop, lambda sample: self.call_from_thread(self._arrived, sample))

    def _arrived(self, sample: Any) -> None:
        self.model.update(sample)
        self._show()

    def _show(self) -> None:
        self.query_one("#status", Static).update(Text(status(self.model, self.refresh_s),
                                                      style="bold"))
        self._fill_table()
        # the findings never take more than a quarter of the screen: the table stays visible
        text = Text(no_wrap=True, overflow="ellipsis")
        lines = finding_lines(self.model, limit=5, max_lines=max(1, (self.size.height - 4) // 4))
        text.append("\n".join(line for _, line in lines))
        at = 0
        for style, line in lines:
            text.stylize(style, at, at + len(line))
            at += len(line) + 1
        self.query_one("#findings", Static).update(text)

    def _fill_table(self) -> None:
        """The rows, with the columns that fit the screen's width (topframe.fit)."""
        table = self.query_one("#groups", DataTable)
        row = table.cursor_row
        rows = [cells(g) for g in self.model.groups]
        widths = fit(self.size.width - 2, rows)  # 2: the vertical scrollbar
        table.clear(columns=True)
        for name, width in widths.items():
            table.add_column(Text(name, justify="right" if name in RIGHT else "left"),
                             key=name, width=width)
        for cells_ in fitted(rows, widths):
            table.add_row(*(Text(c, justify="right" if n in RIGHT else "left")
                            for n, c in zip(widths, cells_, strict=True)))
        if rows:
            table.move_cursor(row=min(row, len(rows) - 1))

    def on_resize(self) -> None:
        self._show()

    def _selected(self) -> Group | None:
        table = self.query_one("#groups", DataTable)
        groups = self.model.groups
        return groups[table.cursor_row] if 0 <= table.cursor_row < len(groups) else None

    def _say(self, text: str, style: str = "") -> None:
        self.query_one("#message", Static).update(Text(text, style=style))

    def action_sort(self, key: str) -> None:
        self.model.set_sort(key)
        self._show()

    def action_edit_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.value = self.model.filter_text
        field.add_class("shown")
        self.call_after_refresh(field.focus)  # focusable once it is displayed

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.model.set_filter(event.value.strip())
        except SockdoctorError as exc:
            self._say(f"bad filter: {exc}", "bold red")
            return
        self._close_filter()
        self._say(f"filter: {self.model.filter_text or '(none)'}")
        self._show()

    def action_back(self) -> None:
        """Escape: leave the filter field, or the sockets screen."""
        if len(self.screen_stack) > 1:
            self.pop_screen()
        elif self.query_one("#filter", Input).has_class("shown"):
            self._close_filter()

    def _close_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.remove_class("shown")
        self.query_one("#groups", DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "groups":
            self.action_sockets()

    def action_sockets(self) -> None:
        g = self._selected()
        if g is not None:
            self.push_screen(SocketsScreen(g, self.model.sample.age_ms))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_findings(self) -> None:
        self.query_one("#findings", Static).toggle_class("hidden")

    def action_relief(self) -> None:
        g = self._selected()
        if g is None:
            return
        command = self.model.relief(g)
        self.printed.append(command)
        self._say(f"relief (not run; printed again when top exits): {command}", "bold")

    def action_quit_top(self) -> None:
        self._stop.set()
        self.exit(0)
