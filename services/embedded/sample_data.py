"""A StormEvents-like sample table, generated rather than downloaded.

Embedded mode answers Kusto queries from a local DuckDB file, and the flows
people write first are the ones from the Kusto documentation: "top 10 states",
"events per day as a time chart", "damage by event type". So the table keeps
the real StormEvents column names, Kusto types and vocabularies (upper-case
state names, NOAA event types, report sources), and skews its distributions the
way the 2007 data is skewed: Texas and Kansas lead, convective storms dominate
and peak in late spring, winter events cluster in December to March, damage is
mostly zero with a long tail, and events arrive in episodes, so a per-day chart
has outbreak days instead of a flat band.

Everything is drawn from one `random.Random(seed)`, and floats are rounded
before they are written, so a seed names the same bytes on every machine.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_COUNT",
    "DEFAULT_SEED",
    "STORM_EVENTS_COLUMNS",
    "TABLE_NAME",
    "storm_events_rows",
    "text_rows",
]

#: Bumped whenever the generator's output changes, so `ensure_database`
#: rebuilds a file an older generator wrote instead of serving stale rows.
GENERATOR_VERSION = 1

DEFAULT_COUNT = 60_000
DEFAULT_SEED = 2007
TABLE_NAME = "StormEvents"

#: The real StormEvents schema, in its real order, with Kusto type names.
STORM_EVENTS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("StartTime", "datetime"),
    ("EndTime", "datetime"),
    ("EpisodeId", "int"),
    ("EventId", "int"),
    ("State", "string"),
    ("EventType", "string"),
    ("InjuriesDirect", "int"),
    ("InjuriesIndirect", "int"),
    ("DeathsDirect", "int"),
    ("DeathsIndirect", "int"),
    ("DamageProperty", "int"),
    ("DamageCrops", "int"),
    ("Source", "string"),
    ("BeginLocation", "string"),
    ("EndLocation", "string"),
    ("BeginLat", "real"),
    ("BeginLon", "real"),
    ("EndLat", "real"),
    ("EndLon", "real"),
    ("EpisodeNarrative", "string"),
    ("EventNarrative", "string"),
    ("StormSummary", "dynamic"),
)

# Time is counted in whole minutes since the year began, the resolution
# StormEvents reports at, and turned into text once per row.
_YEAR = 2007
_DATES = tuple(dt.date(_YEAR, 1, 1) + dt.timedelta(days=d) for d in range(365))
_DAYS = len(_DATES)
_DAY_TEXT = tuple(date.isoformat() for date in _DATES)
#: For each day of the year: the first day of its month, and the month's length.
_MONTH_OF_DAY = tuple(
    (d - date.day + 1, calendar.monthrange(_YEAR, date.month)[1]) for d, date in enumerate(_DATES)
)
_MINUTES_PER_DAY = 24 * 60
_LAST_MINUTE = _DAYS * _MINUTES_PER_DAY - 1
_INT_MAX = 2**31 - 1


# ---------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Area:
    """A StormEvents `State`: a US state, territory or marine zone."""

    name: str
    weight: int
    lat: float
    lon: float
    lat_span: float
    lon_span: float
    places: tuple[str, ...]
    coastal: bool = False
    snowy: bool = True
    marine: bool = False
    ocean: bool = False


def _land(name: str, weight: int, at: tuple[float, float, float, float], places: str, **flags: bool) -> _Area:
    return _Area(name, weight, *at, places=tuple(places.split(", ")), **flags)


def _water(name: str, weight: int, at: tuple[float, float, float, float], places: str, ocean: bool) -> _Area:
    return _Area(name, weight, *at, places=tuple(places.split(", ")), marine=True, ocean=ocean, snowy=False)


# Weights follow the 2007 report counts; centroid and half-span (degrees) keep
# coordinates roughly inside each state.
# fmt: off
_AREAS: tuple[_Area, ...] = (
    _land("TEXAS", 4701, (31.1, -99.3, 4.0, 5.0), "AMARILLO, LUBBOCK, DALLAS, AUSTIN, SAN ANGELO, MIDLAND",
          coastal=True),
    _land("KANSAS", 3166, (38.5, -98.4, 1.0, 3.2), "WICHITA, DODGE CITY, SALINA, HAYS, GOODLAND"),
    _land("IOWA", 2337, (42.0, -93.5, 1.0, 2.7), "DES MOINES, CEDAR RAPIDS, SIOUX CITY, AMES"),
    _land("ILLINOIS", 2022, (40.0, -89.2, 2.2, 1.1), "PEORIA, SPRINGFIELD, CHAMPAIGN, ROCKFORD"),
    _land("MISSOURI", 2016, (38.4, -92.5, 1.7, 2.7), "SPRINGFIELD, COLUMBIA, JOPLIN, SEDALIA"),
    _land("GEORGIA", 1983, (32.7, -83.4, 1.7, 1.4), "MACON, ALBANY, ATHENS, VALDOSTA", coastal=True),
    _land("MINNESOTA", 1881, (46.3, -94.3, 2.6, 2.5), "ROCHESTER, ST CLOUD, MANKATO, BEMIDJI"),
    _land("WISCONSIN", 1850, (44.6, -89.9, 1.9, 1.9), "MADISON, WAUSAU, EAU CLAIRE, GREEN BAY"),
    _land("NEBRASKA", 1766, (41.5, -99.8, 1.0, 3.7), "GRAND ISLAND, NORTH PLATTE, KEARNEY, NORFOLK"),
    _land("NEW YORK", 1750, (42.9, -75.5, 1.3, 3.3), "ALBANY, SYRACUSE, BUFFALO, BINGHAMTON", coastal=True),
    _land("NORTH CAROLINA", 1721, (35.5, -79.4, 1.0, 3.8), "RALEIGH, GREENSBORO, CHARLOTTE, ASHEVILLE",
          coastal=True),
    _land("OKLAHOMA", 1716, (35.6, -97.5, 1.1, 2.9), "NORMAN, ENID, LAWTON, TULSA, WOODWARD"),
    _land("PENNSYLVANIA", 1595, (40.9, -77.8, 0.9, 2.7), "HARRISBURG, STATE COLLEGE, ALTOONA, ERIE"),
    _land("SOUTH DAKOTA", 1409, (44.4, -100.2, 1.3, 3.4), "PIERRE, RAPID CITY, ABERDEEN, HURON"),
    _land("VIRGINIA", 1400, (37.5, -78.8, 0.9, 2.9), "RICHMOND, LYNCHBURG, ROANOKE, BLACKSBURG",
          coastal=True),
    _land("KENTUCKY", 1391, (37.5, -85.3, 0.8, 2.7), "LEXINGTON, BOWLING GREEN, PADUCAH, FRANKFORT"),
    _land("ALABAMA", 1315, (32.8, -86.8, 1.7, 1.1), "BIRMINGHAM, MONTGOMERY, HUNTSVILLE, DOTHAN",
          coastal=True),
    _land("TENNESSEE", 1257, (35.9, -86.4, 0.6, 3.6), "NASHVILLE, KNOXVILLE, JACKSON, COOKEVILLE"),
    _land("COLORADO", 1244, (39.0, -105.5, 1.8, 3.3), "DENVER, PUEBLO, LIMON, GREELEY, BURLINGTON"),
    _land("OHIO", 1233, (40.3, -82.8, 1.4, 1.7), "COLUMBUS, DAYTON, MANSFIELD, ZANESVILLE"),
    _land("MICHIGAN", 1121, (44.3, -85.4, 1.9, 1.7), "LANSING, GRAND RAPIDS, FLINT, GAYLORD"),
    _land("INDIANA", 1085, (39.9, -86.3, 1.7, 0.9), "INDIANAPOLIS, LAFAYETTE, MUNCIE, BLOOMINGTON"),
    _land("MISSISSIPPI", 1044, (32.7, -89.7, 1.9, 0.9), "JACKSON, HATTIESBURG, TUPELO, MERIDIAN",
          coastal=True),
    _land("ARKANSAS", 1028, (34.9, -92.4, 1.1, 1.7), "LITTLE ROCK, FORT SMITH, JONESBORO, PINE BLUFF"),
    _land("SOUTH CAROLINA", 1011, (33.9, -80.9, 1.0, 1.5), "COLUMBIA, GREENVILLE, FLORENCE, AIKEN",
          coastal=True),
    _land("FLORIDA", 965, (28.6, -82.4, 2.3, 1.4), "ORLANDO, TAMPA, OCALA, TALLAHASSEE, MELBOURNE",
          coastal=True, snowy=False),
    _land("NORTH DAKOTA", 951, (47.5, -100.5, 1.0, 3.4), "BISMARCK, MINOT, FARGO, DICKINSON"),
    _land("LOUISIANA", 908, (31.0, -92.0, 1.4, 1.7), "SHREVEPORT, ALEXANDRIA, LAFAYETTE, MONROE",
          coastal=True, snowy=False),
    _land("MONTANA", 852, (47.0, -109.6, 1.8, 5.5), "BILLINGS, GREAT FALLS, MISSOULA, GLASGOW"),
    _land("NEW JERSEY", 760, (40.2, -74.6, 0.8, 0.4), "TRENTON, NEWARK, TOMS RIVER, FLEMINGTON",
          coastal=True),
    _land("MARYLAND", 738, (39.0, -76.8, 0.5, 1.2), "BALTIMORE, FREDERICK, HAGERSTOWN, SALISBURY",
          coastal=True),
    _land("WEST VIRGINIA", 716, (38.6, -80.6, 1.1, 1.7), "CHARLESTON, BECKLEY, ELKINS, MORGANTOWN"),
    _land("NEW MEXICO", 706, (34.4, -106.1, 2.3, 2.3), "ALBUQUERQUE, ROSWELL, CLOVIS, TUCUMCARI"),
    _land("WYOMING", 585, (43.0, -107.5, 1.9, 3.4), "CHEYENNE, CASPER, RIVERTON, SHERIDAN"),
    _land("CALIFORNIA", 561, (36.8, -119.8, 3.0, 2.0), "FRESNO, SACRAMENTO, BAKERSFIELD, REDDING",
          coastal=True),
    _land("ARIZONA", 522, (34.3, -111.7, 1.9, 1.9), "PHOENIX, TUCSON, FLAGSTAFF, YUMA"),
    _land("MASSACHUSETTS", 468, (42.3, -71.8, 0.3, 1.2), "WORCESTER, SPRINGFIELD, BOSTON, PITTSFIELD",
          coastal=True),
    _land("UTAH", 452, (39.3, -111.7, 2.2, 1.7), "SALT LAKE CITY, PROVO, OGDEN, ST GEORGE"),
    _land("IDAHO", 441, (44.4, -114.6, 2.4, 1.3), "BOISE, POCATELLO, IDAHO FALLS, LEWISTON"),
    _land("VERMONT", 420, (44.0, -72.7, 0.9, 0.5), "BURLINGTON, MONTPELIER, RUTLAND, ST JOHNSBURY"),
    _land("NEW HAMPSHIRE", 409, (43.7, -71.6, 0.9, 0.5), "CONCORD, MANCHESTER, KEENE, LACONIA",
          coastal=True),
    _land("MAINE", 401, (45.4, -69.2, 1.7, 1.2), "BANGOR, PORTLAND, AUGUSTA, CARIBOU", coastal=True),
    _land("WASHINGTON", 396, (47.4, -120.5, 1.3, 3.3), "SPOKANE, YAKIMA, WENATCHEE, OLYMPIA", coastal=True),
    _land("OREGON", 352, (44.0, -120.5, 1.7, 3.3), "PORTLAND, BEND, MEDFORD, PENDLETON", coastal=True),
    _land("NEVADA", 198, (39.3, -116.6, 2.8, 1.9), "RENO, LAS VEGAS, ELKO, ELY"),
    _land("CONNECTICUT", 174, (41.6, -72.7, 0.3, 0.6), "HARTFORD, NEW HAVEN, DANBURY, NORWICH", coastal=True),
    _land("ALASKA", 164, (61.4, -150.0, 2.4, 4.8), "ANCHORAGE, FAIRBANKS, JUNEAU, VALDEZ", coastal=True),
    _land("HAWAII", 140, (20.8, -156.3, 0.7, 1.4), "HILO, KAHULUI, LIHUE, HONOLULU", coastal=True,
          snowy=False),
    _land("DELAWARE", 128, (39.0, -75.5, 0.4, 0.2), "DOVER, WILMINGTON, GEORGETOWN, MILFORD", coastal=True),
    _land("RHODE ISLAND", 93, (41.7, -71.5, 0.2, 0.2), "PROVIDENCE, WARWICK, WESTERLY, NEWPORT",
          coastal=True),
    _land("PUERTO RICO", 136, (18.2, -66.5, 0.2, 0.8), "SAN JUAN, PONCE, MAYAGUEZ, CAGUAS", coastal=True,
          snowy=False),
    _land("DISTRICT OF COLUMBIA", 24, (38.9, -77.0, 0.05, 0.05), "WASHINGTON"),
    _water("ATLANTIC SOUTH", 701, (31.0, -79.0, 3.5, 1.5), "CAPE HATTERAS, CHARLESTON HARBOR, JUPITER INLET",
           ocean=True),
    _water("GULF OF MEXICO", 577, (28.0, -90.0, 1.5, 5.5), "MOBILE BAY, GALVESTON BAY, APALACHICOLA",
           ocean=True),
    _water("ATLANTIC NORTH", 188, (40.0, -71.0, 2.5, 2.5), "CAPE COD BAY, LONG ISLAND SOUND, DELAWARE BAY",
           ocean=True),
    _water("LAKE MICHIGAN", 182, (43.8, -87.0, 1.8, 0.5), "GREEN BAY, MILWAUKEE HARBOR, LUDINGTON",
           ocean=False),
    _water("LAKE ERIE", 61, (42.2, -81.2, 0.4, 1.8), "DUNKIRK, CLEVELAND HARBOR, TOLEDO HARBOR", ocean=False),
    _water("LAKE SUPERIOR", 44, (47.5, -88.0, 0.7, 2.8), "DULUTH HARBOR, MARQUETTE, GRAND MARAIS",
           ocean=False),
    _water("LAKE HURON", 37, (44.8, -82.4, 1.1, 0.7), "SAGINAW BAY, ALPENA, HARBOR BEACH", ocean=False),
    _water("E PACIFIC", 12, (38.0, -124.0, 5.0, 0.8), "POINT ARENA, CAPE MENDOCINO, MONTEREY BAY",
           ocean=True),
)
# fmt: on


@dataclass(frozen=True)
class _Kind:
    """A NOAA event type: where it can happen, when, and how it hurts."""

    name: str
    weight: int
    where: str  # land | winter | coastal | marine | ocean
    season: str  # key of _MONTHS
    damage: float = 0.0  # chance of property damage
    crops: float = 0.0  # chance of crop damage
    hurt: float = 0.0  # chance of direct injuries
    deadly: float = 0.0  # chance of direct deaths
    track: float = 0.0  # degrees an event may travel, for begin/end points


# fmt: off
_KINDS: tuple[_Kind, ...] = (
    _Kind("Thunderstorm Wind", 13015, "land", "convective", damage=0.45, crops=0.02, hurt=0.006,
          deadly=0.002, track=0.15),
    _Kind("Hail", 12711, "land", "convective", damage=0.08, crops=0.05, hurt=0.001, track=0.05),
    _Kind("Flash Flood", 3688, "land", "convective", damage=0.35, crops=0.03, hurt=0.01, deadly=0.01,
          track=0.1),
    _Kind("Drought", 3616, "land", "heat", crops=0.12),
    _Kind("Winter Weather", 3349, "winter", "winter", damage=0.02, hurt=0.004),
    _Kind("Winter Storm", 3269, "winter", "winter", damage=0.05, hurt=0.01, deadly=0.003),
    _Kind("Heavy Snow", 3088, "winter", "winter", damage=0.04, hurt=0.003),
    _Kind("High Wind", 2331, "land", "cool", damage=0.3, hurt=0.01, deadly=0.003),
    _Kind("Flood", 2011, "land", "any", damage=0.3, crops=0.06, deadly=0.004, track=0.1),
    _Kind("Strong Wind", 1710, "land", "cool", damage=0.5, hurt=0.01, deadly=0.004),
    _Kind("Marine Thunderstorm Wind", 1650, "marine", "convective"),
    _Kind("Tornado", 1518, "land", "convective", damage=0.7, crops=0.05, hurt=0.08, deadly=0.012, track=0.3),
    _Kind("Heavy Rain", 1450, "land", "convective", damage=0.05, crops=0.02),
    _Kind("Frost/Freeze", 1342, "land", "frost", crops=0.25),
    _Kind("Lightning", 940, "land", "convective", damage=0.6, hurt=0.12, deadly=0.05),
    _Kind("Dense Fog", 720, "land", "cool", hurt=0.01),
    _Kind("Excessive Heat", 700, "land", "heat", deadly=0.08),
    _Kind("Heat", 610, "land", "heat", deadly=0.03),
    _Kind("Extreme Cold/Wind Chill", 590, "winter", "winter", deadly=0.05),
    _Kind("Funnel Cloud", 520, "land", "convective"),
    _Kind("Cold/Wind Chill", 480, "land", "frost", deadly=0.02),
    _Kind("Blizzard", 410, "winter", "winter", damage=0.05, deadly=0.01),
    _Kind("Ice Storm", 350, "winter", "winter", damage=0.3, deadly=0.01),
    _Kind("Wildfire", 350, "land", "heat", damage=0.3, hurt=0.03),
    _Kind("Lake-Effect Snow", 300, "winter", "winter"),
    _Kind("High Surf", 250, "coastal", "cool", deadly=0.03),
    _Kind("Waterspout", 250, "marine", "convective"),
    _Kind("Marine High Wind", 150, "marine", "cool"),
    _Kind("Coastal Flood", 150, "coastal", "cool", damage=0.25),
    _Kind("Rip Current", 110, "coastal", "heat", hurt=0.2, deadly=0.6),
    _Kind("Marine Hail", 100, "marine", "convective"),
    _Kind("Marine Strong Wind", 100, "marine", "cool"),
    _Kind("Tropical Storm", 100, "coastal", "tropical", damage=0.4, crops=0.1),
    _Kind("Sleet", 60, "winter", "winter"),
    _Kind("Storm Surge/Tide", 50, "coastal", "tropical", damage=0.5),
    _Kind("Freezing Fog", 50, "winter", "winter"),
    _Kind("Debris Flow", 50, "land", "any", damage=0.5),
    _Kind("Dust Storm", 40, "land", "heat", hurt=0.05),
    _Kind("Avalanche", 30, "winter", "winter", deadly=0.3),
    _Kind("Astronomical Low Tide", 30, "coastal", "cool"),
    _Kind("Hurricane (Typhoon)", 20, "coastal", "tropical", damage=0.8, crops=0.3),
    _Kind("Marine Tropical Storm", 20, "ocean", "tropical"),
    _Kind("Dust Devil", 20, "land", "heat"),
    _Kind("Lakeshore Flood", 20, "coastal", "cool", damage=0.2),
    _Kind("Dense Smoke", 15, "land", "heat"),
    _Kind("Tropical Depression", 10, "coastal", "tropical"),
)

#: Relative likelihood of each month, January first.
_MONTHS: dict[str, tuple[int, ...]] = {
    "convective": (2, 3, 6, 10, 14, 16, 14, 11, 6, 4, 2, 1),
    "winter": (20, 17, 12, 4, 1, 0, 0, 0, 0, 2, 8, 18),
    "heat": (2, 2, 3, 4, 7, 12, 16, 16, 11, 6, 3, 2),
    "cool": (11, 10, 11, 9, 5, 3, 3, 3, 5, 9, 10, 11),
    "frost": (9, 8, 9, 11, 4, 0, 0, 0, 2, 13, 10, 8),
    "tropical": (0, 0, 0, 0, 1, 3, 6, 14, 16, 8, 2, 0),
    "any": (7, 7, 9, 10, 10, 9, 9, 9, 8, 8, 8, 8),
}

#: Who reported it. Drought comes from the Drought Monitor; marine reports from
#: buoys and coastal stations; storms from spotters and the public.
_SOURCES: dict[str, tuple[tuple[str, int], ...]] = {
    "default": (
        ("Trained Spotter", 30), ("Public", 18), ("Law Enforcement", 14), ("Emergency Manager", 12),
        ("Mesonet", 5), ("ASOS", 5), ("COOP Observer", 4), ("Amateur Radio", 3), ("Newspaper", 3),
        ("NWS Storm Survey", 2), ("Broadcast Media", 2), ("Fire Department/Rescue", 1),
        ("Utility Company", 1), ("Department of Highways", 1),
    ),
    "winter": (
        ("COOP Observer", 25), ("Trained Spotter", 25), ("Public", 18), ("CoCoRaHS", 10),
        ("Law Enforcement", 6), ("ASOS", 6), ("Emergency Manager", 5), ("Department of Highways", 5),
    ),
    "heat": (
        ("Drought Monitor", 55), ("ASOS", 15), ("Official NWS Observations", 12), ("Newspaper", 8),
        ("Public", 5), ("Park/Forest Service", 5),
    ),
    "marine": (
        ("Buoy", 25), ("C-MAN Station", 20), ("Mesonet", 20), ("ASOS", 15), ("Coast Guard", 10),
        ("Public", 5), ("Trained Spotter", 5),
    ),
}
# fmt: on

_EPISODE_NARRATIVES: dict[str, tuple[str, ...]] = {
    "convective": (
        "A cold front moving across {area} during the {part} produced a line of severe thunderstorms "
        "with damaging winds, large hail and torrential rain.",
        "Scattered supercells developed along a dryline over {area} during the {part}, producing "
        "large hail and isolated tornadoes.",
        "A warm, unstable air mass over {area} fueled slow moving thunderstorms during the {part}.",
    ),
    "winter": (
        "A strong low pressure system tracked across {area}, spreading heavy snow and blowing snow "
        "over the region.",
        "Arctic air settled over {area} behind a departing storm, with freezing rain and sleet in "
        "the south and snow in the north.",
    ),
    "heat": (
        "A persistent upper level ridge kept {area} hot and dry, worsening drought conditions across "
        "the region.",
        "Well above normal temperatures and little rainfall continued across {area}.",
    ),
    "cool": (
        "A tight pressure gradient behind a strong cold front brought high winds to {area}.",
        "A deep ocean storm brought strong winds and rough seas to {area}.",
    ),
    "frost": (
        "Clear skies and light winds allowed temperatures to fall below freezing across {area}, "
        "damaging sensitive crops.",
    ),
    "tropical": (
        "A tropical system moved ashore along {area}, bringing heavy rain, storm surge and gusty winds.",
    ),
    "any": ("Several days of heavy rain across {area} pushed rivers and streams above flood stage.",),
}

_PARTS_OF_DAY = ("early morning", "morning", "afternoon", "evening", "overnight hours")


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = 0.0
    out = []
    for weight in weights:
        total += weight
        out.append(total)
    return out


def _pick(rng: random.Random, items: Sequence[Any], cumulative: Sequence[float]) -> Any:
    # `random.choices` does the same bisect, but this skips building a list per call.
    return items[bisect.bisect(cumulative, rng.random() * cumulative[-1])]


#: Events an episode carries beyond its first, on average, by season.
#: Convective outbreaks come in clusters; a drought or a frost is usually one
#: report. An episode's lead event type is drawn with its weight divided by the
#: episode size, so the table's overall mix of event types still follows the
#: weights above.
_EPISODE_SIZE = {"convective": 3.0}
_DEFAULT_EPISODE_SIZE = 0.5

_JSON = json.JSONEncoder(separators=(",", ":"))


class _Generator:
    """One seeded run. All weights are precomputed; rows are yielded lazily."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.area_cum = _cumulative([a.weight for a in _AREAS])
        self.leads: dict[str, tuple[tuple[_Kind, ...], list[float]]] = {}
        self.followers: dict[tuple[str, str], tuple[tuple[_Kind, ...], list[float]]] = {}
        for area in _AREAS:
            fits = tuple(k for k in _KINDS if _fits(k, area))
            self.leads[area.name] = (fits, _cumulative([k.weight / (1 + _size(k)) for k in fits]))
            for season in {k.season for k in fits}:
                same = tuple(k for k in fits if k.season == season)
                self.followers[area.name, season] = (same, _cumulative([k.weight for k in same]))
        # A per-day multiplier makes outbreak days and quiet days, the texture a
        # real daily time chart has; the month weight sets the season under it.
        bursts = [self.rng.lognormvariate(0.0, 0.7) for _ in range(_DAYS)]
        self.day_cum = {
            season: _cumulative(
                [months[date.month - 1] * burst for date, burst in zip(_DATES, bursts, strict=True)]
            )
            for season, months in _MONTHS.items()
        }
        self.source_cum = {key: _cumulative([w for _, w in table]) for key, table in _SOURCES.items()}

    def rows(self, count: int) -> Iterator[tuple[Any, ...]]:
        """Rows with timestamps as ISO text; see `storm_events_rows`."""
        ids = [1000, 5000]  # last episode id, last event id
        produced = 0
        while produced < count:
            episode = self._episode(ids, count - produced)
            produced += len(episode)
            yield from episode

    def _episode(self, ids: list[int], room: int) -> list[tuple[Any, ...]]:
        rng = self.rng
        random_ = rng.random
        ids[0] += 1 + int(random_() * 3)
        area: _Area = _pick(rng, _AREAS, self.area_cum)
        leads, leads_cum = self.leads[area.name]
        lead: _Kind = _pick(rng, leads, leads_cum)
        day = _pick(rng, range(_DAYS), self.day_cum[lead.season])
        # Convective storms peak in the afternoon and evening, as they do.
        convective = lead.season == "convective"
        hour = min(23, int(rng.triangular(8, 24, 17))) if convective else int(random_() * 24)
        size = min(room, 1 + int(rng.expovariate(1 / _size(lead))))
        start = (day * 24 + hour) * 60 + int(random_() * 60)
        center = (
            area.lat + rng.triangular(-1, 1, 0) * area.lat_span,
            area.lon + rng.triangular(-1, 1, 0) * area.lon_span,
        )
        narrative = rng.choice(_EPISODE_NARRATIVES[lead.season]).format(
            area=area.name.title(), part=_PARTS_OF_DAY[min(4, hour // 5)]
        )
        followers, followers_cum = self.followers[area.name, lead.season]
        spread = 240 if size > 2 else 60
        events = []
        for _ in range(size):
            kind = lead if random_() < 0.5 else _pick(rng, followers, followers_cum)
            ids[1] += 1 + int(random_() * 2)
            begin = min(_LAST_MINUTE, start + int(random_() * spread))
            events.append(self._event(ids[0], ids[1], area, kind, begin, center, narrative))
        return events

    def _event(
        self,
        episode_id: int,
        event_id: int,
        area: _Area,
        kind: _Kind,
        begin: int,
        center: tuple[float, float],
        narrative: str,
    ) -> tuple[Any, ...]:
        rng = self.rng
        random_ = rng.random
        begin, end = _duration(random_, kind, begin)
        lat = center[0] + (random_() - 0.5) * 0.6 * min(1.0, area.lat_span)
        lon = center[1] + (random_() - 0.5) * 0.6 * min(1.0, area.lon_span)
        if kind.track:
            end_lat = lat + (random_() - 0.5) * 2 * kind.track
            end_lon = lon + random_() * 2 * kind.track  # storms move east
            end_place = rng.choice(area.places) if random_() < 0.3 else None
        else:
            end_lat, end_lon, end_place = lat, lon, None
        begin_place = rng.choice(area.places)

        injuries = _casualties(rng, kind.hurt, 3.0)
        deaths = _casualties(rng, kind.deadly, 1.0)
        injuries_indirect = _casualties(rng, kind.hurt / 4, 2.0)
        deaths_indirect = _casualties(rng, kind.deadly / 4, 1.0)
        scale = 11.0 if kind.name in _COSTLY else 8.6
        damage = _money(rng, scale, 1.7) if kind.damage and random_() < kind.damage else 0
        crops = _money(rng, 9.5, 1.8) if kind.crops and random_() < kind.crops else 0

        source_key = _source_key(area, kind)
        source = _pick(rng, _SOURCES[source_key], self.source_cum[source_key])[0]
        event_narrative = _event_narrative(rng, kind, source, begin_place, damage)
        begin_text, end_text = _stamp(begin), _stamp(end)
        # Composed by hand because it is the hot path; only the narrative can
        # hold characters JSON must escape, so only it goes through the encoder.
        summary = (
            f'{{"TotalDamages":{damage + crops},"StartTime":"{begin_text}.0000000Z",'
            f'"EndTime":"{end_text}.0000000Z","Details":{{"Description":{_JSON.encode(event_narrative)},'
            f'"Location":"{area.name}"}}}}'
        )
        return (
            begin_text,
            end_text,
            episode_id,
            event_id,
            area.name,
            kind.name,
            injuries,
            injuries_indirect,
            deaths,
            deaths_indirect,
            damage,
            crops,
            source,
            begin_place,
            end_place or begin_place,
            round(lat, 4),
            round(lon, 4),
            round(end_lat, 4),
            round(end_lon, 4),
            narrative,
            event_narrative,
            summary,
        )


_COSTLY = frozenset({"Tornado", "Hurricane (Typhoon)", "Storm Surge/Tide"})


def _size(kind: _Kind) -> float:
    return _EPISODE_SIZE.get(kind.season, _DEFAULT_EPISODE_SIZE)


def _source_key(area: _Area, kind: _Kind) -> str:
    if area.marine:
        return "marine"
    if kind.name == "Drought":
        return "heat"
    return "winter" if kind.where == "winter" else "default"


def _fits(kind: _Kind, area: _Area) -> bool:
    if area.marine:
        return kind.where == "marine" or (kind.where == "ocean" and area.ocean)
    if kind.where == "winter":
        return area.snowy
    if kind.where == "coastal":
        return area.coastal
    return kind.where == "land"


def _duration(random_: Callable[[], float], kind: _Kind, begin: int) -> tuple[int, int]:
    """Begin and end, in minutes since the year began."""
    if kind.name == "Drought":
        # Drought is reported per month: first minute to last minute.
        first, days = _MONTH_OF_DAY[begin // _MINUTES_PER_DAY]
        return first * _MINUTES_PER_DAY, (first + days) * _MINUTES_PER_DAY - 1
    if kind.season == "convective":
        minutes = int(random_() * (180 if kind.name in ("Flash Flood", "Heavy Rain") else 45))
    elif kind.season in ("winter", "tropical", "heat"):
        minutes = 360 + int(random_() * 2520)
    else:
        minutes = 60 + int(random_() * 720)
    return begin, min(_LAST_MINUTE, begin + minutes)


def _casualties(rng: random.Random, chance: float, mean: float) -> int:
    # No draw at all for a harmless event type: most rows, and the cheap path.
    if not chance or rng.random() >= chance:
        return 0
    return 1 + int(rng.expovariate(1 / mean))


def _money(rng: random.Random, mu: float, sigma: float) -> int:
    """A dollar amount with a long tail, rounded the way damage estimates are."""
    raw = int(rng.lognormvariate(mu, sigma))
    if raw < 1000:
        return max(100, raw // 100 * 100)
    step = 10 ** (len(str(raw)) - 2)  # two significant digits
    return min(_INT_MAX // step * step, raw // step * step)


_HAIL_SIZES = (0.75, 0.88, 1.0, 1.0, 1.25, 1.75, 2.0, 2.75)


def _event_narrative(rng: random.Random, kind: _Kind, source: str, place: str, damage: int) -> str:
    random_ = rng.random
    where = place.title()
    name = kind.name
    if name in ("Hail", "Marine Hail"):
        size = _HAIL_SIZES[int(random_() * len(_HAIL_SIZES))]
        return f"{source} reported hail of {size:.2f} inch diameter near {where}."
    if "Thunderstorm Wind" in name or "High Wind" in name:
        return f"{source} reported a wind gust of {50 + int(random_() * 40)} knots near {where}."
    if name in ("Heavy Snow", "Lake-Effect Snow", "Winter Storm", "Blizzard"):
        return f"{source} measured {4 + int(random_() * 14)} inches of snow at {where}."
    if name in ("Flash Flood", "Flood", "Heavy Rain"):
        return f"{source} reported {1 + random_() * 5:.1f} inches of rain and water over roads near {where}."
    if name == "Tornado":
        rating = min(4, int(rng.expovariate(1.2)))
        return f"A tornado touched down near {where}, rated EF{rating}."
    if damage:
        return f"{name} near {where} caused an estimated ${damage:,} in damage."
    return f"{source} reported {name.lower()} near {where}."


def _stamp(minute: int) -> str:
    """Minutes since the year began, as ISO text without a zone."""
    day, rest = divmod(minute, _MINUTES_PER_DAY)
    hour, minute = divmod(rest, 60)
    return f"{_DAY_TEXT[day]}T{hour:02d}:{minute:02d}:00"


def storm_events_rows(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> Iterator[tuple[Any, ...]]:
    """*count* StormEvents rows, in `STORM_EVENTS_COLUMNS` order.

    Datetimes are naive UTC `datetime`s and `dynamic` values compact JSON text
    (what a DuckDB JSON column holds), so equal seeds give equal tuples.
    """
    parse = dt.datetime.fromisoformat
    for row in text_rows(count, seed):
        yield (parse(row[0]), parse(row[1]), *row[2:])


def text_rows(count: int, seed: int) -> Iterator[tuple[Any, ...]]:
    """The rows with their timestamps still as text, the form the staging file
    wants: parsing them only to print them again was a third of the build time."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return _Generator(seed).rows(count)
