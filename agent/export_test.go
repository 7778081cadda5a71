package agent

// SetStepHook makes a call f(step) at each step of a renewal, for crash
// tests. It must be called before Run or Renew.
func SetStepHook(a *Agent, f func(step string)) { a.hook = f }

// ParseRetryAfter exposes parseRetryAfter to tests.
var ParseRetryAfter = parseRetryAfter

// KeyNameForTest is the keystore name of a generation's key.
var KeyNameForTest = keyName

// ParseTPMChallenge exposes parseTPMChallenge to tests.
var ParseTPMChallenge = parseTPMChallenge
