"""Seeded generator of shop events: signups, logins and orders as wire JSON lines.

Usage::

    python -m examples.shop.generate --users 2000 --days 60 --seed 7 --out shop.jsonl.gz

One event per line (``.gz`` suffix: gzip), in file order = the order events were
*delivered*, which is ts order except for the late and duplicated deliveries below.
Same arguments, same bytes.

Event types (the wire format of :mod:`entities.events`)::

    signup  attrs: country, email_domain, channel                  (no label)
    login   attrs: ip, device, success, lat, long                  label 0/1
    order   attrs: amount, category, ship_country                  label 0/1

How each pattern is built
-------------------------
Every user draws from its own ``random.Random(f"{seed}:{index}")``, so a user's story
does not depend on how many users come before it.

*Normal shoppers* (every user, fraud victims included, lives a normal life): a home
country (coordinates and time zone), 1-3 devices, 1-3 home IPs (each IP a fixed
point near home), 2-4 favourite categories, a personal amount scale (log-normal) and
a session rate (log-normal, ~0.3 sessions a day). Sessions follow a daily rhythm in
local time (peaks at lunch and in the evening). 65% of sessions are web sessions
that log in (7% after one or two failed attempts from the same device, a quarter
of which give up), 35% are app sessions that order without a login event. 40% of
sessions order (15% of those twice); amounts are the user's scale times log-normal
noise, 2% of orders are a big purchase (x5-10); 4% ship abroad (gifts). 1% of web
sessions come from a new device (a new phone). 4% of users travel 5-12 days: logins
from the trip country through a hotel IP, with their usual devices (or, for 30% of
trips, half the time a borrowed one); some orders ship there. 5% of users are
gamers: half of their ordering sessions are 2-6 in-game purchases of 0.99-19.99
minutes apart (benign look-alikes of card testing). 12% of users are *legacy* users
whose signup predates the file (no signup event: ``ship_country_mismatch`` is NaN
for them); the others sign up just before their first session. 12% of users take a
break of 32-40 days; a returning web user fails a login and often gives up and
orders from the app: that failed login evicts the 31-day-old successful ones from
the record, so ``secs_since_last_success_login`` becomes NaN (retention eviction).

*Account takeover* (4% of users, label 1 on the attacker's events): after at least
three days of the victim's history, an attacker far from home (another continent,
> 1,500 km) on a new device and 1-3 new proxy IPs tries the password 0-6 times
(20%: none, the password was phished), succeeds, then places 1-4 large orders
(250-2,500, electronics, jewelry or gift cards) within minutes, 85% shipped to a
drop country abroad; in 40% of takeovers the attacker comes back hours later
(another login and order). The victim goes on living normally (label 0).

*Card testing* (labels 1 on every event of a burst), two kinds:
stuffed accounts (1% of users): a successful credential-stuffing login (after 0-2
failures) from a datacenter IP far away on a new device, then a burst of 8-40 small
orders (0.50-9.99, 60% of them round amounts like 1.00) of digital goods or gift
cards, seconds apart, with a fresh login from a new proxy IP every ~8 orders;
guest testers (1 per 100 users, extra entities): no signup, no login, 1-3 bursts of
10-40 small orders shipped to varying countries.

*Boundary users* (max(3, users // 200), label 0), scripted on purpose: logins exactly
24 h apart, orders exactly 7 d and 30 d apart (left-open windows), a successful login
then a failed one exactly 31 d later (retention drops items with ts <= newest - 31 d)
followed by an order in the same millisecond.

Hard cases for the oracle
-------------------------
- *Late events*: 3% of events are delivered 1 s - 50 min late (written that much
  later in the file). Arrival order (replay, produce) is the file sorted stably by
  ts, so they take their ts place again; a stream fed in file order would see them
  as late within the spec's one-hour allowed lateness, never beyond it.
- *Equal timestamps across attributes*: 8% of web sessions that order place the
  first order in the same millisecond as the login, written before or after it
  (half each); 5% of new users sign up and order in the same millisecond, in
  either order. File order decides which one counts for the other.
- *Duplicates*: 0.4% of events are delivered twice (same event id and content,
  up to 10 min later); the second delivery is ignored.
- *Missing signup*: legacy users and guest testers order without a signup.
- *Timestamps*: 85% ISO-8601 with ``Z`` (milliseconds when not whole seconds), 15%
  epoch milliseconds; 10% of events are not on a whole second.

Why no label leaks into features
--------------------------------
Labels are set by the pattern that made the event and written only in the
``label`` field, which features never read. Event ids are random, entity ids are
numbered over a shuffled order of all users, and fraud is told apart only by
behaviour in the attributes (where, on which device, how many failures, how much,
how often, shipped where), which is what the features measure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# name: (lat, long, UTC offset in hours)
HOME_COUNTRIES: dict[str, tuple[float, float, float]] = {
    "US": (39.8, -98.6, -6),
    "CA": (49.3, -95.0, -5),
    "MX": (23.6, -102.5, -6),
    "BR": (-14.2, -51.9, -3),
    "GB": (54.0, -2.0, 0),
    "FR": (46.2, 2.2, 1),
    "DE": (51.2, 10.4, 1),
    "ES": (40.5, -3.7, 1),
    "IT": (41.9, 12.6, 1),
    "NL": (52.1, 5.3, 1),
    "PL": (51.9, 19.1, 1),
    "SE": (60.1, 18.6, 1),
    "IN": (20.6, 79.0, 5.5),
    "JP": (36.2, 138.3, 9),
    "AU": (-25.3, 133.8, 10),
}
ATTACKER_COUNTRIES: dict[str, tuple[float, float, float]] = {
    "RU": (55.8, 37.6, 3),
    "NG": (9.1, 8.7, 1),
    "VN": (14.1, 108.3, 7),
    "RO": (45.9, 24.97, 2),
    "ID": (-0.8, 113.9, 7),
    "UA": (49.0, 31.4, 2),
    "CN": (35.9, 104.2, 8),
    "KE": (-0.02, 37.9, 3),
}
COUNTRIES = {**HOME_COUNTRIES, **ATTACKER_COUNTRIES}
EMAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me", "web.de", "orange.fr"]
CHANNELS = ["web", "ios", "android", "referral", "ads"]
CATEGORIES = [
    "groceries",
    "fashion",
    "books",
    "home",
    "beauty",
    "toys",
    "sports",
    "electronics",
    "garden",
    "pets",
    "music",
]
FRAUD_CATEGORIES = ["electronics", "jewelry", "gift_cards"]
TESTING_CATEGORIES = ["digital_goods", "gift_cards"]
TEST_AMOUNTS = [0.5, 1.0, 1.0, 2.0, 5.0]
GAME_AMOUNTS = [0.99, 1.99, 4.99, 4.99, 9.99, 19.99]
# Weight of each local hour 0..23 (a daily rhythm: lunch and evening peaks).
HOUR_WEIGHTS = [
    1,
    0.5,
    0.3,
    0.2,
    0.2,
    0.3,
    0.8,
    1.5,
    2,
    2.2,
    2.4,
    2.8,
    3.2,
    3,
    2.6,
    2.5,
    2.7,
    3,
    3.5,
    4.2,
    4.5,
    4,
    3,
    2,
]
EARTH_RADIUS_KM = 6371.0

P_LEGACY = 0.12  # no signup event in the file
P_BREAK = 0.12  # a 32-40 day break
P_TRAVEL = 0.04
P_TRAVEL_DEVICE = 0.3
P_GAMER = 0.05
P_ATO = 0.04
P_STUFFED = 0.01
GUESTS_PER_USER = 0.01
P_WEB = 0.65
P_FAILED_FIRST = 0.07
P_GIVE_UP = 0.25  # of sessions with failed attempts
P_ORDER = 0.40
P_NEW_DEVICE = 0.01
P_SAME_MS_ORDER = 0.08
P_SAME_MS_SIGNUP = 0.05
P_LATE = 0.03
P_DUPLICATE = 0.004
P_EPOCH_TS = 0.15
P_SUBSECOND = 0.10


@dataclass
class Ev:
    """One generated event before writing; ``delay`` is how late it is delivered."""

    ts: int  # ms since START
    type: str
    attrs: dict[str, Any]
    label: int | None
    order: int = 0  # tie-break among this user's events delivered in the same ms
    delay: int = 0
    event_id: str = ""
    entity_id: str = ""


@dataclass
class User:
    """A shopper's stable traits and the state of their story."""

    rng: random.Random
    country: str
    lat: float
    long: float
    utc_offset: float
    devices: list[str]
    ips: list[str]
    ip_places: dict[str, tuple[float, float]]
    favourites: list[str]
    amount_scale: float
    rate: float
    gamer: bool = False
    events: list[Ev] = field(default_factory=list)

    def add(self, ev: Ev) -> Ev:
        ev.order = len(self.events)
        self.events.append(ev)
        return ev


def _hex(rng: random.Random, bits: int = 48) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _near(rng: random.Random, lat: float, long: float, spread: float) -> tuple[float, float]:
    la = max(-89.9, min(89.9, lat + rng.uniform(-spread, spread)))
    lo = (long + rng.uniform(-spread, spread) + 180.0) % 360.0 - 180.0
    return round(la, 4), round(lo, 4)


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b[1] - a[1]) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def _new_ip(user: User, place: tuple[float, float], spread: float) -> str:
    rng = user.rng
    ip = f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    user.ip_places[ip] = _near(rng, place[0], place[1], spread)
    return ip


def _new_user(rng: random.Random) -> User:
    country = rng.choice(list(HOME_COUNTRIES))
    lat, long, offset = HOME_COUNTRIES[country]
    home = _near(rng, lat, long, 3.0)
    user = User(
        rng=rng,
        country=country,
        lat=home[0],
        long=home[1],
        utc_offset=offset,
        devices=[f"d{_hex(rng)}" for _ in range(rng.randint(1, 3))],
        ips=[],
        ip_places={},
        favourites=rng.sample(CATEGORIES, rng.randint(2, 4)),
        amount_scale=math.exp(rng.uniform(math.log(15), math.log(120))),
        rate=min(4.0, rng.lognormvariate(math.log(0.3), 0.8)),
    )
    user.ips = [_new_ip(user, home, 0.05) for _ in range(rng.randint(1, 3))]
    user.gamer = rng.random() < P_GAMER
    return user


def _login(user: User, ts: int, ip: str, device: str, success: bool, label: int = 0) -> Ev:
    lat, long = user.ip_places[ip]
    attrs = {"ip": ip, "device": device, "success": success, "lat": lat, "long": long}
    return user.add(Ev(ts, "login", attrs, label))


def _order(user: User, ts: int, amount: float, category: str, ship: str, label: int = 0) -> Ev:
    attrs = {"amount": round(max(amount, 0.0), 2), "category": category, "ship_country": ship}
    return user.add(Ev(ts, "order", attrs, label))


def _signup(user: User, ts: int) -> Ev:
    rng = user.rng
    attrs = {
        "country": user.country,
        "email_domain": rng.choice(EMAIL_DOMAINS),
        "channel": rng.choice(CHANNELS),
    }
    return user.add(Ev(ts, "signup", attrs, None))


def _session_times(user: User, start: int, end: int, breaks: list[tuple[int, int]]) -> list[int]:
    """Session start times in [start, end): Poisson per day, hours from the daily rhythm."""
    rng = user.rng
    times = []
    for day in range(start // DAY, (end + DAY - 1) // DAY):
        # Poisson(rate) by counting exponential gaps in one day.
        n, acc = 0, rng.expovariate(user.rate)
        while acc < 1.0:
            n += 1
            acc += rng.expovariate(user.rate)
        for _ in range(n):
            local_hour = rng.choices(range(24), HOUR_WEIGHTS)[0]
            ts = int(
                day * DAY + (local_hour - user.utc_offset) * HOUR + rng.randrange(HOUR // SECOND) * SECOND
            )
            if start <= ts < end and not any(a <= ts < b for a, b in breaks):
                times.append(ts)
    return sorted(times)


def _amount(user: User) -> float:
    rng = user.rng
    amount = user.amount_scale * rng.lognormvariate(0.0, 0.5)
    if rng.random() < 0.02:
        amount *= rng.uniform(5, 10)
    return max(1.0, amount)


def _category(user: User) -> str:
    rng = user.rng
    return rng.choice(user.favourites) if rng.random() < 0.9 else rng.choice(CATEGORIES)


def _normal_order(user: User, ts: int, ship_abroad_to: str | None = None) -> Ev:
    rng = user.rng
    if ship_abroad_to is not None and rng.random() < 0.3:
        ship = ship_abroad_to
    elif rng.random() < 0.04:
        ship = rng.choice([c for c in HOME_COUNTRIES if c != user.country])
    else:
        ship = user.country
    return _order(user, ts, _amount(user), _category(user), ship)


def _session(
    user: User, ts: int, trip: tuple[str, str, str] | None, returning: bool, web: bool | None = None
) -> None:
    """One normal session at ``ts``: maybe a login (maybe after failures), maybe orders."""
    rng = user.rng
    ip = trip[1] if trip else rng.choice(user.ips)
    device = trip[2] if trip and trip[2] and rng.random() < 0.5 else rng.choice(user.devices)
    if rng.random() < P_NEW_DEVICE:
        device = f"d{_hex(rng)}"
        user.devices.append(device)
    if web is None:
        web = rng.random() < P_WEB
    t = ts
    login = None
    if web:
        fails = rng.randint(1, 2) if rng.random() < P_FAILED_FIRST or returning else 0
        for _ in range(fails):
            _login(user, t, ip, device, False)
            t += rng.randint(5, 40) * SECOND
        if fails and ((returning and rng.random() < 0.6) or rng.random() < P_GIVE_UP):
            # Gave up: a returning user then often orders from the app (no login).
            if returning and rng.random() < 0.7:
                _normal_order(user, t + rng.randint(1, 30) * MINUTE, trip[0] if trip else None)
            return
        login = _login(user, t, ip, device, True)
    if rng.random() >= P_ORDER:
        return
    if user.gamer and rng.random() < 0.5:  # in-game purchases: a few small orders in a row
        for _ in range(rng.randint(2, 6)):
            t += rng.randint(1, 5) * MINUTE + rng.randrange(60) * SECOND
            _order(user, t, rng.choice(GAME_AMOUNTS), "digital_goods", user.country)
        return
    for k in range(2 if rng.random() < 0.15 else 1):
        if k == 0 and login is not None and rng.random() < P_SAME_MS_ORDER:
            order = _normal_order(user, t, trip[0] if trip else None)
            if rng.random() < 0.5:  # written before the login
                order.order, login.order = login.order, order.order
            continue
        t += rng.randint(1, 20) * MINUTE + rng.randrange(60) * SECOND
        _normal_order(user, t, trip[0] if trip else None)


def _far_country(user: User, choices: dict[str, tuple[float, float, float]]) -> str:
    far = [c for c, (la, lo, _) in choices.items() if _km((user.lat, user.long), (la, lo)) > 1500]
    return user.rng.choice(far or list(choices))


def _account_takeover(user: User, ts: int) -> None:
    rng = user.rng
    where = _far_country(user, ATTACKER_COUNTRIES)
    la, lo, _ = ATTACKER_COUNTRIES[where]
    ips = [_new_ip(user, (la, lo), 1.5) for _ in range(rng.randint(1, 3))]
    device = f"d{_hex(rng)}"
    drop = where if rng.random() < 0.6 else _far_country(user, COUNTRIES)
    t = ts
    visits = 2 if rng.random() < 0.4 else 1
    for visit in range(visits):
        if visit:
            t += rng.randint(2, 12) * HOUR
        fails = 0 if visit or rng.random() < 0.2 else rng.choice([1, 2, 3, 4, 6])
        for _ in range(fails):
            _login(user, t, rng.choice(ips), device, False, label=1)
            t += rng.randint(3, 90) * SECOND
        _login(user, t, rng.choice(ips), device, True, label=1)
        for _ in range(rng.randint(1, 4) if visit == 0 else 1):
            t += rng.randint(2, 15) * MINUTE + rng.randrange(60) * SECOND
            ship = drop if rng.random() < 0.85 else user.country
            _order(user, t, rng.uniform(250, 2500), rng.choice(FRAUD_CATEGORIES), ship, label=1)


def _test_amount(rng: random.Random) -> float:
    return rng.choice(TEST_AMOUNTS) if rng.random() < 0.6 else rng.uniform(0.5, 9.99)


def _stuffed_card_testing(user: User, ts: int) -> None:
    rng = user.rng
    where = _far_country(user, ATTACKER_COUNTRIES)
    place = ATTACKER_COUNTRIES[where][:2]
    device = f"d{_hex(rng)}"
    ip = _new_ip(user, place, 1.5)
    t = ts
    for _ in range(rng.choice([0, 0, 1, 2])):
        _login(user, t, ip, device, False, label=1)
        t += rng.randint(2, 20) * SECOND
    _login(user, t, ip, device, True, label=1)
    for k in range(rng.randint(8, 40)):
        t += rng.randint(5, 120) * SECOND
        if k and k % 8 == 0:
            ip = _new_ip(user, place, 1.5)
            _login(user, t, ip, device, True, label=1)
            t += rng.randint(2, 10) * SECOND
        _order(user, t, _test_amount(rng), rng.choice(TESTING_CATEGORIES), user.country, label=1)


def _guest_tester(rng: random.Random, days: int) -> User:
    user = _new_user(rng)
    user.favourites = TESTING_CATEGORIES
    t = rng.randrange(0, max(1, days - 3) * DAY)
    for _ in range(rng.randint(1, 3)):
        ship = rng.choice(list(COUNTRIES))
        for _ in range(rng.randint(10, 40)):
            t += rng.randint(5, 120) * SECOND
            _order(user, t, _test_amount(rng), rng.choice(TESTING_CATEGORIES), ship, label=1)
        t += rng.randint(1, 36) * HOUR
    return user


def _shopper(rng: random.Random, days: int) -> User:
    """A normal shopper's whole story; some become victims of takeover or card testing."""
    user = _new_user(rng)
    end = days * DAY
    legacy = rng.random() < P_LEGACY
    start = 0 if legacy else rng.randrange(0, max(1, days // 2) * DAY)
    breaks = []
    if rng.random() < P_BREAK and end - start > 40 * DAY:
        b = rng.randrange(start + DAY, end - 39 * DAY)
        breaks.append((b, b + rng.randint(32, 40) * DAY))
    trip: tuple[int, int, str, str, str] | None = None
    if rng.random() < P_TRAVEL:
        where = _far_country(user, HOME_COUNTRIES)
        t0 = rng.randrange(start, end)
        hotel = _new_ip(user, COUNTRIES[where][:2], 0.3)
        borrowed = f"d{_hex(rng)}" if rng.random() < P_TRAVEL_DEVICE else ""
        trip = (t0, t0 + rng.randint(5, 12) * DAY, where, hotel, borrowed)
    times = _session_times(user, start, end, breaks)
    if not legacy:
        first = times[0] if times else start + rng.randrange(DAY)
        signup_ts = max(0, first - rng.randint(10, 600) * SECOND)
        signup = _signup(user, signup_ts)
        if rng.random() < P_SAME_MS_SIGNUP:  # sign up and order at once, in either file order
            order = _normal_order(user, signup_ts)
            if rng.random() < 0.5:
                order.order, signup.order = signup.order, order.order
    returning_after = {b[1] for b in breaks}
    for ts in times:
        returning = any(b <= ts < b + 2 * DAY for b in returning_after)
        if returning:
            returning_after -= {b for b in returning_after if b <= ts}
        here = (trip[2], trip[3], trip[4]) if trip and trip[0] <= ts < trip[1] else None
        _session(user, ts, here, returning)
    history = [e.ts for e in user.events if e.type != "signup"]
    if history and history[-1] - history[0] > 3 * DAY:
        draw = rng.random()
        if draw < P_ATO:
            _account_takeover(user, rng.randrange(history[0] + 3 * DAY, history[-1] + DAY))
        elif draw < P_ATO + P_STUFFED:
            _stuffed_card_testing(user, rng.randrange(history[0] + 3 * DAY, history[-1] + DAY))
    return user


def _boundary_user(rng: random.Random, days: int) -> User:
    """Scripted exact boundaries: 24 h, 7 d and 30 d apart, eviction at exactly 31 d."""
    user = _new_user(rng)
    ip, device = user.ips[0], user.devices[0]
    t0 = rng.randrange(0, DAY)
    _signup(user, t0)
    for k in range(min(days, 10)):
        _login(user, t0 + k * DAY + MINUTE, ip, device, True)
    for step in (7 * DAY, 30 * DAY):
        for k in range(3):
            ts = t0 + 2 * HOUR + k * step
            if ts < days * DAY:
                _order(user, ts, 20.0 + k * 5.0, user.favourites[0], user.country)
    if days > 33:
        t1 = t0 + DAY + 5 * MINUTE
        _login(user, t1, ip, device, True)
        _login(user, t1 + 31 * DAY, ip, device, False)  # evicts every login <= t1
        _order(user, t1 + 31 * DAY, 42.0, user.favourites[0], user.country)
    return user


def generate(users: int, days: int, seed: int) -> list[Ev]:
    """All events of ``users`` shoppers (+ guest testers, boundary users), in file order."""
    n_guests = round(users * GUESTS_PER_USER)
    n_boundary = max(3, users // 200)
    kinds = ["shopper"] * users + ["guest"] * n_guests + ["boundary"] * n_boundary
    random.Random(f"{seed}:kinds").shuffle(kinds)
    makers = {"shopper": _shopper, "guest": _guest_tester, "boundary": _boundary_user}
    events: list[Ev] = []
    for index, kind in enumerate(kinds):
        rng = random.Random(f"{seed}:{index}")
        user = makers[kind](rng, days)
        entity_id = f"u{index:06d}"
        # Sub-second parts per distinct ts, so same-ms partners stay equal; none for
        # boundary users, whose exact spacing is the point.
        subsecond = {
            ts: rng.randint(1, 999) if kind != "boundary" and rng.random() < P_SUBSECOND else 0
            for ts in sorted({ev.ts for ev in user.events})
        }
        deliveries = []
        for ev in user.events:
            if ev.ts >= days * DAY:
                continue
            ev.ts += subsecond[ev.ts]
            ev.entity_id = entity_id
            ev.event_id = _hex(rng, 64)
            if rng.random() < P_LATE:
                ev.delay = rng.randint(1, 50 * 60) * SECOND
            deliveries.append(ev)
            if rng.random() < P_DUPLICATE:
                dup = Ev(**{**ev.__dict__, "delay": ev.delay + rng.randint(0, 10 * 60) * SECOND})
                dup.order = ev.order + len(user.events)
                deliveries.append(dup)
        events += deliveries
    # Delivery order; ties keep each user's intended order (same-ms pairs).
    events.sort(key=lambda e: (e.ts + e.delay, e.entity_id, e.order))
    return events


def _wire(ev: Ev, rng: random.Random) -> dict[str, Any]:
    ms = int(START.timestamp() * 1000) + ev.ts
    ts: int | str
    if rng.random() < P_EPOCH_TS:
        ts = ms
    else:
        t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
        ts = t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms % 1000:03d}" if ms % 1000 else "") + "Z"
    out: dict[str, Any] = {
        "event_id": ev.event_id,
        "entity_id": ev.entity_id,
        "type": ev.type,
        "ts": ts,
        "attrs": ev.attrs,
    }
    if ev.label is not None:
        out["label"] = ev.label
    return out


def lines(events: list[Ev], seed: int) -> Iterator[str]:
    """The JSON lines of ``events`` (the timestamp format is drawn per event)."""
    rng = random.Random(f"{seed}:format")
    for ev in events:
        yield json.dumps(_wire(ev, rng), separators=(",", ":")) + "\n"


def write(events: list[Ev], out: Path, seed: int) -> None:
    """Write ``events`` as JSON lines, gzip (reproducible: no name, no mtime) for a ``.gz`` path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(lines(events, seed)).encode()
    if out.suffix == ".gz":
        with out.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            f.write(data)
    else:
        out.write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    """Command line: generate and write; print a one-line summary."""
    ap = argparse.ArgumentParser(description="Generate seeded shop events (wire JSON lines).")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, required=True, help="F.jsonl or F.jsonl.gz")
    args = ap.parse_args(argv)
    events = generate(args.users, args.days, args.seed)
    write(events, args.out, args.seed)
    counts: dict[str, int] = {}
    frauds: dict[str, int] = {}
    for ev in events:
        counts[ev.type] = counts.get(ev.type, 0) + 1
        frauds[ev.type] = frauds.get(ev.type, 0) + (ev.label or 0)
    summary = ", ".join(f"{counts[t]:,} {t}s ({frauds[t]:,} fraud)" for t in sorted(counts))
    print(f"wrote {len(events):,} events to {args.out}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
