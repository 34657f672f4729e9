package worker

// The decision table: what the worker does with a message after one classified Graph
// answer, for a request (a reprocess call) and for a state check (a read of the
// assignment), and what the answer tells the 403 circuit. It is the one place where a
// verdict becomes an action; Worker.call and Worker.handleCheck only carry actions out.

// action is what is done with the message after one answer.
type action int

const (
	actSettle      action = iota // a request: settle it with the decision's outcome; a check: go on with the state read
	actRetry                     // back off and call again (a request within its delivery budget, else handed back); a check is handed back after the backoff
	actHoldToken                 // no token: hold the message until one is obtained, no attempt counted
	actHoldCircuit               // refused while the circuit is open: says nothing of this message; hold it until a probe gets through
	actStop                      // a check only: the state cannot be read, so tracking ends with a final event
)

// circuitEffect is what an answer tells the circuit.
type circuitEffect int

const (
	circuitNone    circuitEffect = iota // no answer from Graph: the probe, if it was one, is abandoned
	circuitPassed                       // an answer that is not a refusal
	circuitRefused                      // a 403, or a 401 after the client refreshed its token
)

// decision is one row of the table.
type decision struct {
	request action
	kind    string // the request's outcome, with actSettle: accepted or failed
	check   action
	circuit circuitEffect
}

// decide returns the row for verdict v. circuitOpen says the circuit was open before the
// answer came: a refusal then holds the request instead of failing it.
func decide(v verdict, circuitOpen bool) decision {
	switch v {
	case verdictAccepted:
		return decision{request: actSettle, kind: KindAccepted, check: actSettle, circuit: circuitPassed}
	case verdictPermanent:
		return decision{request: actSettle, kind: KindFailed, check: actStop, circuit: circuitPassed}
	case verdictForbidden:
		// A check is never failed for a refusal: it is held like a request while the
		// circuit is open, and retried after the cooldown.
		if circuitOpen {
			return decision{request: actHoldCircuit, check: actHoldCircuit, circuit: circuitRefused}
		}
		return decision{request: actSettle, kind: KindFailed, check: actHoldCircuit, circuit: circuitRefused}
	case verdictThrottled, verdictRetry:
		return decision{request: actRetry, check: actRetry, circuit: circuitPassed}
	default: // verdictCredential
		return decision{request: actHoldToken, check: actHoldToken, circuit: circuitNone}
	}
}

// applyCircuit reports an answer's effect to the circuit; probe says the call was its probe.
func (w *Worker) applyCircuit(e circuitEffect, probe bool) {
	switch e {
	case circuitNone:
		w.circuit.abandon(probe)
	case circuitPassed:
		w.circuit.record(false, probe)
	case circuitRefused:
		w.circuit.record(true, probe)
	}
}
