"""Capacity C = ceil(capacity_factor * T*k / E), computed in exact decimal arithmetic.

The reference for the library's capacity: the factor as the user wrote it (repr gives the
shortest decimal that round-trips, "1.1" for 1.1), not as a binary double, so 1.1 * 25 * 2 / 5
is exactly 11. A capacity past every copy of the batch (T*k) is T*k.
"""
import math
from fractions import Fraction


def capacity(capacity_factor, copies, experts):
    return min(copies, math.ceil(Fraction(repr(float(capacity_factor))) * copies / experts))
