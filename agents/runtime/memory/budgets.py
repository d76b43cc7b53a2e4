"""The budget windows of :class:`~agents.runtime.memory.MemoryState`: the cell and its calls."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from agents.runtime.clock import Clock
from agents.runtime.state import BudgetHold, BudgetWindow, WindowInit


@dataclass
class _Budget:
    spent: int = 0
    reservations: dict[str, tuple[int, float]] = field(
        default_factory=dict
    )  # id -> (amount, expiry)
    ready: bool = False  # written by budget_prepare (a window created by a read is not)
    refused: int = 0
    min_refused: int = 0
    # Settlements that came while the window was not ready (entry id -> actual): the rebuild
    # counts them as spent instead of restoring their executions' reservations.
    orphans: dict[str, int] = field(default_factory=dict)

    def reserved(self, now: float) -> int:
        # An expired reservation's process never said what it spent: it is spent.
        for entry_id in [e for e, (_, expiry) in self.reservations.items() if expiry <= now]:
            self.spent += self.reservations.pop(entry_id)[0]
        return sum(amount for amount, _ in self.reservations.values())

    def hold(self, entry_id: str, amount: int, expiry: float) -> None:
        held, _ = self.reservations.get(entry_id, (0, expiry))
        self.reservations[entry_id] = (held + amount, expiry)

    def settle(self, entry_id: str, actual: int) -> None:
        # Without its reservation (settled already, or expired into spend) nothing changes:
        # a settlement sent twice counts once.
        if self.reservations.pop(entry_id, None) is not None:
            self.spent += max(0, actual)
        elif not self.ready:
            self.orphans[entry_id] = max(0, actual)

    def refuse(self, amount: int) -> None:
        self.refused += 1
        self.min_refused = amount if not self.min_refused else min(self.min_refused, amount)


class BudgetCalls:
    """The budget table and its primitives.

    Not a store by itself: :class:`~agents.runtime.memory.MemoryState` creates the clock, the
    one lock and the tables. Each public method takes that lock for its whole body; each ``_``
    helper expects it held, so the composite calls can chain helpers under one acquisition.
    """

    _clock: Clock
    _lock: threading.Lock
    _budgets: dict[str, _Budget]

    # --- helpers (call with the lock held) ---

    def _budget(self, key: str) -> _Budget:
        cell = self._budgets.get(key)
        if cell is None:
            cell = self._budgets[key] = _Budget()
        return cell

    def _budget_unknown(self, holds: tuple[BudgetHold, ...]) -> tuple[str, ...]:
        return tuple(h.key for h in holds if not self._budget(h.key).ready)

    def _budget_check(self, holds: tuple[BudgetHold, ...], now: float) -> bool:
        """Every hold fits; the ones that do not count a refusal."""
        ok = True
        for h in holds:
            cell = self._budget(h.key)
            if not cell.ready:
                ok = False
            elif cell.reserved(now) + cell.spent + h.amount > h.limit:
                cell.refuse(h.amount)
                ok = False
        return ok

    def _budget_take(
        self, holds: tuple[BudgetHold, ...], now: float, entry_id: str, ttl_s: float
    ) -> dict[str, int]:
        remaining = {}
        for h in holds:
            cell = self._budget(h.key)
            cell.hold(entry_id, h.amount, now + ttl_s)
            reserved = cell.reserved(now)
            remaining[h.key] = h.limit - cell.spent - reserved
        return remaining

    def _budget_left(self, holds: tuple[BudgetHold, ...], now: float) -> dict[str, int]:
        left = {}
        for h in holds:
            cell = self._budget(h.key)
            reserved = cell.reserved(now)  # first: an expired reservation becomes spend
            left[h.key] = h.limit - cell.spent - reserved
        return left

    # --- primitives ---

    async def budget_reserve(
        self, holds: tuple[BudgetHold, ...], entry_id: str, ttl_s: float
    ) -> tuple[bool, dict[str, int]]:
        with self._lock:
            now = self._clock.now()
            if not self._budget_check(holds, now):
                return False, self._budget_left(holds, now)
            return True, self._budget_take(holds, now, entry_id, ttl_s)

    async def budget_usage(self, keys: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        with self._lock:
            now = self._clock.now()
            usage = {}
            for key in keys:
                cell = self._budget(key)
                reserved = cell.reserved(now)  # first: an expired reservation becomes spend
                usage[key] = (cell.spent, reserved)
            return usage

    async def budget_windows(self, keys: tuple[str, ...]) -> dict[str, BudgetWindow]:
        with self._lock:
            now = self._clock.now()
            windows = {}
            for key in keys:
                cell = self._budgets.get(key) or _Budget()
                reserved = cell.reserved(now)
                windows[key] = BudgetWindow(
                    cell.spent, reserved, cell.refused, cell.min_refused, cell.ready
                )
            return windows

    async def budget_prepare(self, windows: tuple[WindowInit, ...]) -> tuple[str, ...]:
        with self._lock:
            now = self._clock.now()
            written = []
            for init in windows:
                cell = self._budget(init.key)
                if cell.ready:
                    continue
                # A window this store held without knowing it complete (a settlement, a read)
                # keeps what it has where that is more: the rebuild never lowers spend.
                cell.spent = max(cell.spent, init.spent)
                for entry_id, amount, expires_at in init.reservations:
                    if entry_id in cell.orphans:  # settled while the window was gone
                        cell.spent += cell.orphans.pop(entry_id)
                    elif entry_id not in cell.reservations:
                        cell.reservations[entry_id] = (amount, expires_at)
                cell.reserved(now)  # the expired ones are spent
                cell.orphans.clear()
                cell.ready = True
                written.append(init.key)
            return tuple(written)
