"""The Poisson-compliance test battery over a stream of batches (docs/statistics.md)."""

from dpverify.stats._results import BatteryResult as BatteryResult
from dpverify.stats._results import TestResult as TestResult
from dpverify.stats.battery import DEFAULT_MAX_LAG as DEFAULT_MAX_LAG
from dpverify.stats.battery import TEST_NAMES as TEST_NAMES
from dpverify.stats.battery import battery_from_ledger as battery_from_ledger
from dpverify.stats.battery import holm as holm
from dpverify.stats.battery import run_battery as run_battery
