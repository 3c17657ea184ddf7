"""The sampling test battery over a stream of batches, against the declared sampler (docs/statistics.md)."""

from dpverify.stats._declared import NULL_SAMPLERS as NULL_SAMPLERS
from dpverify.stats._declared import DeclaredNull as DeclaredNull
from dpverify.stats._ledger import LedgerSampling as LedgerSampling
from dpverify.stats._ledger import SamplingStream as SamplingStream
from dpverify.stats._ledger import SegmentResult as SegmentResult
from dpverify.stats._ledger import battery_from_ledger as battery_from_ledger
from dpverify.stats._ledger import declared_null as declared_null
from dpverify.stats._ledger import sampling_from_ledger as sampling_from_ledger
from dpverify.stats._ledger import step_addressable as step_addressable
from dpverify.stats._results import BatteryResult as BatteryResult
from dpverify.stats._results import TestResult as TestResult
from dpverify.stats.battery import DEFAULT_MAX_LAG as DEFAULT_MAX_LAG
from dpverify.stats.battery import TEST_NAMES as TEST_NAMES
from dpverify.stats.battery import holm as holm
from dpverify.stats.battery import run_battery as run_battery
from dpverify.stats.battery import run_battery_on as run_battery_on
