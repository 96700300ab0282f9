package capabilities

// testDial is the QMP client the tests probe with; nil is the production
// one (monitor.Dial).
var testDial dialFunc
