"""What istiod (1.22) puts on every outbound route (issue 14), for the tests that check Baton
does what Envoy does with it: the unit tests of the translation and the differential ones."""

ISTIO_RETRY = {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,"
                           "retriable-status-codes",
               "num_retries": 2, "retriable_status_codes": [503],
               "retry_host_predicate": [{
                   "name": "envoy.retry_host_predicates.previous_hosts",
                   "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                                             "previous_hosts.v3.PreviousHostsPredicate"}}],
               "host_selection_retry_max_attempts": "5"}
# Istio 1.12 on: the route timeout is the stream's duration, grpc-timeout included.
ISTIO_TIMEOUTS = {"timeout": "0s", "max_grpc_timeout": "0s",
                  "max_stream_duration": {"max_stream_duration": "0s",
                                          "grpc_timeout_header_max": "0s"}}
