import os

from hypothesis import HealthCheck, settings

# deadline=None: kernel calls are fast, but the spec's plain loops over a few thousand
# steps are not, and a shared 2-core CI machine makes timings meaningless.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=60, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.register_profile("dev", max_examples=20, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
