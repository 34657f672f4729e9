package queue

import (
	"fmt"

	"github.com/nats-io/jsm.go/natscontext"
)

// Where a connection's settings came from (Resolve).
const (
	FromURL      = "NATS_URL"
	FromContext  = "context"  // named by --context or NATS_CONTEXT
	FromSelected = "selected" // the NATS CLI's selected context (nats context select)
	FromNone     = ""         // nothing: the caller's default (an embedded server, or the local one)
)

// Resolve decides where to connect as the NATS CLI does: a NATS_URL (with the NATS_*
// variables) wins; else the context named by contextName (the --context flag or
// NATS_CONTEXT); else the context the CLI has selected (its files under
// $XDG_CONFIG_HOME/nats, or ~/.config/nats). A context that is named or selected but cannot
// be read is an error, never a reason to fall back to another server. It returns the
// settings and where they came from; FromNone when nothing names a server.
func Resolve(getenv func(string) string, natsURL, contextName string) (ConnConfig, string, error) {
	cc := ConnConfigFromEnv(getenv)
	if natsURL != "" {
		cc.URL = natsURL
		return cc, FromURL, nil
	}
	from := FromContext
	if contextName == "" {
		contextName = getenv("NATS_CONTEXT")
	}
	if contextName == "" {
		contextName, from = natscontext.SelectedContext(), FromSelected
	}
	if contextName == "" {
		return cc, FromNone, nil
	}
	nctx, err := natscontext.New(contextName, true)
	if err != nil {
		return ConnConfig{}, from, fmt.Errorf("NATS context %q (%s): %w", contextName, describeFrom(from), err)
	}
	opts, err := nctx.NATSOptions()
	if err != nil {
		return ConnConfig{}, from, fmt.Errorf("NATS context %q: %w", contextName, err)
	}
	out := ConnConfig{
		URL: nctx.ServerURL(), Creds: nctx.Creds(), NKey: nctx.NKey(), User: nctx.User(),
		Password: nctx.Password(), Token: nctx.Token(), CA: nctx.CA(), Cert: nctx.Certificate(), Key: nctx.Key(),
		JWT: nctx.UserJWT(), Seed: nctx.UserSeed(), Context: contextName, contextOpts: opts,
	}
	return out, from, nil
}

func describeFrom(from string) string {
	if from == FromSelected {
		return "selected with nats context select"
	}
	return "named by --context or NATS_CONTEXT"
}

// Describe says where the connection's settings came from, for the startup log.
func Describe(cc ConnConfig, from string) string {
	switch from {
	case FromURL:
		return "NATS_URL"
	case FromContext:
		return fmt.Sprintf("NATS context %q (--context or NATS_CONTEXT)", cc.Context)
	case FromSelected:
		return fmt.Sprintf("NATS context %q (selected with nats context select)", cc.Context)
	}
	return "none"
}
