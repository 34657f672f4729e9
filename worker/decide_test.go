package worker

import "testing"

// TestDecide covers every row of the decision table: each verdict, with the circuit closed
// and open, for requests and checks alike.
func TestDecide(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		verdict verdict
		open    bool
		want    decision
	}{
		{verdictAccepted, false, decision{request: actSettle, kind: KindAccepted, check: actSettle, circuit: circuitPassed}},
		{verdictAccepted, true, decision{request: actSettle, kind: KindAccepted, check: actSettle, circuit: circuitPassed}},
		{verdictPermanent, false, decision{request: actSettle, kind: KindFailed, check: actStop, circuit: circuitPassed}},
		{verdictPermanent, true, decision{request: actSettle, kind: KindFailed, check: actStop, circuit: circuitPassed}},
		{verdictForbidden, false, decision{request: actSettle, kind: KindFailed, check: actHoldCircuit, circuit: circuitRefused}},
		{verdictForbidden, true, decision{request: actHoldCircuit, check: actHoldCircuit, circuit: circuitRefused}},
		{verdictThrottled, false, decision{request: actRetry, check: actRetry, circuit: circuitPassed}},
		{verdictThrottled, true, decision{request: actRetry, check: actRetry, circuit: circuitPassed}},
		{verdictRetry, false, decision{request: actRetry, check: actRetry, circuit: circuitPassed}},
		{verdictRetry, true, decision{request: actRetry, check: actRetry, circuit: circuitPassed}},
		{verdictCredential, false, decision{request: actHoldToken, check: actHoldToken, circuit: circuitNone}},
		{verdictCredential, true, decision{request: actHoldToken, check: actHoldToken, circuit: circuitNone}},
	} {
		if got := decide(tc.verdict, tc.open); got != tc.want {
			t.Errorf("decide(%d, open %v) = %+v, want %+v", tc.verdict, tc.open, got, tc.want)
		}
	}
}
