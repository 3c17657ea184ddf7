"""Empirical privacy auditing: lower bounds on ε from canaries (docs/empirical-audit.md)."""

from dpverify.empirical.one_run import GUESS_FAMILIES as GUESS_FAMILIES
from dpverify.empirical.one_run import METHOD as METHOD
from dpverify.empirical.one_run import OneRunAudit as OneRunAudit
from dpverify.empirical.one_run import audit_scores as audit_scores
from dpverify.empirical.one_run import correct_guesses as correct_guesses
from dpverify.empirical.one_run import epsilon_from_counts as epsilon_from_counts
from dpverify.empirical.one_run import guess_family as guess_family
from dpverify.empirical.one_run import p_value as p_value
