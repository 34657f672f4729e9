package graph

import "context"

// staticTokens is a TokenSource for tests that never reach an authority.
type staticTokens struct{}

func (staticTokens) Token(context.Context) (string, error)           { return "t", nil }
func (staticTokens) Refresh(context.Context, string) (string, error) { return "t2", nil }
