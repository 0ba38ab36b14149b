"""Property-based fuzz of job payloads: whatever arrives, admission answers with a Rejected
naming a field, or a valid request. Never another exception (which would crash an entry point)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.config.settings import Settings
from runner.worker.admission import QUEUE, Rejected, admit, parse_request

CONFIG = Settings(registries=[{"host": "127.0.0.1:5000"}], executors={"socket": {"enabled": True}}, default_executor="socket")
FIELDS = ["id", "context", "dockerfile", "tags", "build_args", "secret_build_args", "secrets", "target", "labels",
          "platform", "platforms", "no_cache", "executor", "builder", "timeout", "push", "cache_key", "callback_url", "extra"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
near_valid_tags = st.lists(st.one_of(st.just("127.0.0.1:5000/app:1"), st.from_regex(r"[a-z0-9.:/@_-]{0,40}", fullmatch=True)),
                           max_size=4)
payloads = st.one_of(
    values,
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=8),
    st.fixed_dictionaries({"tags": near_valid_tags}, optional={name: values for name in FIELDS if name != "tags"}),
    st.fixed_dictionaries({"tags": near_valid_tags, "context": st.fixed_dictionaries(
        {"type": st.sampled_from(["git", "upload", "x"])}, optional={"url": st.text(max_size=60), "ref": st.text(max_size=20),
                                                                   "commit": st.text(max_size=45), "subdir": st.text(max_size=20)})}),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_any_payload_is_admitted_or_rejected_by_field(payload):
    try:
        admit(parse_request(payload), CONFIG, QUEUE)
    except Rejected as exc:
        assert exc.field and exc.message
