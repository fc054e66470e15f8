package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// MaxRequestSize is the largest request, in bytes, that a server accepts.
// Responses have no limit.
const MaxRequestSize = 1 << 20

// Request variant names. Unit variants travel as a bare JSON string, the
// others as a single-key object {"Variant":{...}}.
const (
	KindPing                  = "Ping"
	KindListServices          = "ListServices"
	KindServiceStatus         = "ServiceStatus"
	KindServiceStart          = "ServiceStart"
	KindServiceStop           = "ServiceStop"
	KindServiceRestart        = "ServiceRestart"
	KindServiceEnable         = "ServiceEnable"
	KindServiceDisable        = "ServiceDisable"
	KindServiceLogs           = "ServiceLogs"
	KindServiceLogsClear      = "ServiceLogsClear"
	KindServiceLogsStream     = "ServiceLogsStream"
	KindServiceLogsStreamStop = "ServiceLogsStreamStop"
	KindProcessList           = "ProcessList"
	KindProcessStatus         = "ProcessStatus"
	KindProcessStart          = "ProcessStart"
	KindProcessStop           = "ProcessStop"
	KindProcessRestart        = "ProcessRestart"
	KindProcessKill           = "ProcessKill"
	KindSystemReload          = "SystemReload"
	KindSystemReboot          = "SystemReboot"
	KindSystemShutdown        = "SystemShutdown"
	KindSystemStatus          = "SystemStatus"

	// KindServiceLogsFollow is an addition: the response is a stream of
	// LogLine values on the same connection, ended by the client closing it.
	KindServiceLogsFollow = "ServiceLogsFollow"
)

// Response variant names.
const (
	KindPong              = "Pong"
	KindSuccess           = "Success"
	KindError             = "Error"
	KindServiceList       = "ServiceList"
	KindLogsStreamStarted = "LogsStreamStarted"
	KindProcessStarted    = "ProcessStarted"
	// KindServiceStatus, KindServiceLogs, KindProcessList, KindProcessStatus
	// and KindSystemStatus name responses as well as requests.

	// KindLogLine is an addition: one event of a ServiceLogsFollow stream.
	KindLogLine = "LogLine"
)

// field names the body keys a request variant carries.
type field string

const (
	fName      field = "name"
	fLines     field = "lines"
	fVsockCID  field = "vsock_cid"
	fVsockPort field = "vsock_port"
	fPID       field = "pid"
	fSignal    field = "signal"
	fCommand   field = "command"
	fArgs      field = "args"
	fEnv       field = "env"
)

// requestFields lists, per request variant, the body keys it carries; nil
// marks a unit variant. It is the single table both directions of the codec
// use, so adding a variant is adding a row.
var requestFields = map[string][]field{
	KindPing:                  nil,
	KindListServices:          nil,
	KindServiceStatus:         {fName},
	KindServiceStart:          {fName},
	KindServiceStop:           {fName},
	KindServiceRestart:        {fName},
	KindServiceEnable:         {fName},
	KindServiceDisable:        {fName},
	KindServiceLogs:           {fName, fLines},
	KindServiceLogsClear:      {fName},
	KindServiceLogsStream:     {fName, fVsockCID, fVsockPort},
	KindServiceLogsStreamStop: {fName, fVsockPort},
	KindProcessList:           nil,
	KindProcessStatus:         {fPID},
	KindProcessStart:          {fCommand, fArgs, fEnv},
	KindProcessStop:           {fPID},
	KindProcessRestart:        {fPID},
	KindProcessKill:           {fPID, fSignal},
	KindSystemReload:          nil,
	KindSystemReboot:          nil,
	KindSystemShutdown:        nil,
	KindSystemStatus:          nil,
	KindServiceLogsFollow:     {fName, fLines},
}

// optionalFields may be missing from a request body; they then take their
// zero value. Every other listed field is required, as in the reference.
var optionalFields = map[field]bool{fArgs: true, fEnv: true}

// optionalIn lists fields that are optional only in some variants; absent
// they are zero. ServiceLogsStreamStop's vsock_port is an addition: zero
// (what the reference's clients send, by leaving it out) stops every stream
// of the service, a port only that one.
var optionalIn = map[string]map[field]bool{
	KindServiceLogsStreamStop: {fVsockPort: true},
}

func optional(kind string, f field) bool { return optionalFields[f] || optionalIn[kind][f] }

// RequestKinds returns every request variant name, sorted.
func RequestKinds() []string {
	kinds := make([]string, 0, len(requestFields))
	for k := range requestFields {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	return kinds
}

// Request is one control request. Kind selects the variant; only the fields
// that variant carries (see the table in docs/protocol.md) are encoded.
type Request struct {
	Kind      string
	Name      string
	Lines     int
	VsockCID  uint32
	VsockPort uint32
	PID       int
	Signal    int
	Command   string
	Args      []string
	Env       []string
}

// UnknownRequestError reports a well-formed request whose variant this
// server does not know.
type UnknownRequestError struct{ Kind string }

func (e *UnknownRequestError) Error() string {
	return fmt.Sprintf("unknown request %q (this init does not support it; check that initctl and init versions match)", e.Kind)
}

// MarshalJSON encodes r in the externally tagged shape.
func (r Request) MarshalJSON() ([]byte, error) {
	fields, ok := requestFields[r.Kind]
	if !ok {
		return nil, &UnknownRequestError{Kind: r.Kind}
	}
	if fields == nil {
		return json.Marshal(r.Kind)
	}
	body := make(map[string]any, len(fields))
	for _, f := range fields {
		switch f {
		case fName:
			body[string(f)] = r.Name
		case fLines:
			body[string(f)] = r.Lines
		case fVsockCID:
			body[string(f)] = r.VsockCID
		case fVsockPort:
			if r.VsockPort == 0 && optional(r.Kind, f) {
				continue // leave an optional zero out, as the reference does
			}
			body[string(f)] = r.VsockPort
		case fPID:
			body[string(f)] = r.PID
		case fSignal:
			body[string(f)] = r.Signal
		case fCommand:
			body[string(f)] = r.Command
		case fArgs:
			body[string(f)] = nonNil(r.Args)
		case fEnv:
			body[string(f)] = nonNil(r.Env)
		}
	}
	return tagged(r.Kind, body)
}

// tagged encodes {"<kind>":<body>} without building a map: kind is one of
// the fixed variant names, which need no escaping. The body is encoded
// straight after the prefix, so a large answer (a long process list) is
// held once, not marshalled and then copied.
func tagged(kind string, body any) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(`{"`)
	buf.WriteString(kind)
	buf.WriteString(`":`)
	// Encode writes what Marshal returns, then a newline: it becomes the
	// closing brace.
	if err := json.NewEncoder(&buf).Encode(body); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	b[len(b)-1] = '}'
	return b, nil
}

// UnmarshalJSON decodes an externally tagged request. A unit variant may
// also be written {"Ping":null}, as the reference accepts. An unknown
// variant yields *UnknownRequestError.
func (r *Request) UnmarshalJSON(data []byte) error {
	if req, ok := decodeCommon(data); ok {
		*r = req
		return nil
	}
	return r.unmarshalGeneral(data)
}

// unmarshalGeneral decodes any request shape.
func (r *Request) unmarshalGeneral(data []byte) error {
	kind, body, err := splitVariant(data)
	if err != nil {
		return err
	}
	fields, ok := requestFields[kind]
	if !ok {
		return &UnknownRequestError{Kind: kind}
	}
	*r = Request{Kind: kind}
	if fields == nil {
		if body != nil && !isNull(body) && !bytes.Equal(bytes.TrimSpace(body), []byte("{}")) {
			return fmt.Errorf("%s takes no fields, got %s", kind, body)
		}
		return nil
	}
	if body == nil || isNull(body) {
		return fmt.Errorf("%s needs an object with %v", kind, fields)
	}
	// One pass over the body: pointers tell present fields from absent
	// (or null) ones.
	var b struct {
		Name      *string `json:"name"`
		Lines     *int    `json:"lines"`
		VsockCID  *uint32 `json:"vsock_cid"`
		VsockPort *uint32 `json:"vsock_port"`
		PID       *int    `json:"pid"`
		Signal    *int    `json:"signal"`
		Command   *string `json:"command"`
		// Lists stay raw until the variant is known to carry them, so that
		// a huge list in a request that has no such field costs nothing.
		Args json.RawMessage `json:"args"`
		Env  json.RawMessage `json:"env"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("%s: field %q: %w", kind, te.Field, err)
		}
		return fmt.Errorf("%s: body must be an object: %w", kind, err)
	}
	for _, f := range fields {
		present := true
		switch f {
		case fName:
			present = set(&r.Name, b.Name)
		case fLines:
			present = set(&r.Lines, b.Lines)
		case fVsockCID:
			present = set(&r.VsockCID, b.VsockCID)
		case fVsockPort:
			present = set(&r.VsockPort, b.VsockPort)
		case fPID:
			present = set(&r.PID, b.PID)
		case fSignal:
			present = set(&r.Signal, b.Signal)
		case fCommand:
			present = set(&r.Command, b.Command)
		case fArgs:
			present, err = setList(&r.Args, b.Args)
		case fEnv:
			present, err = setList(&r.Env, b.Env)
		}
		if err != nil {
			return fmt.Errorf("%s: field %q: %w", kind, f, err)
		}
		if !present && !optional(kind, f) {
			return fmt.Errorf("%s: missing field %q", kind, f)
		}
	}
	return nil
}

// setList decodes a raw list of strings into dst; absent or null is not
// present.
func setList(dst *[]string, raw json.RawMessage) (bool, error) {
	if raw == nil || isNull(raw) {
		return false, nil
	}
	return true, json.Unmarshal(raw, dst)
}

// set copies *src to *dst when src is non-nil and reports whether it was.
func set[T any](dst *T, src *T) bool {
	if src == nil {
		return false
	}
	*dst = *src
	return true
}

// Response is one control response (or one event of a stream). Kind selects
// the variant; see docs/protocol.md for which fields each carries.
type Response struct {
	Kind string
	// Message is the text of Success, Error and ProcessStarted.
	Message string
	// Services is the body of ServiceList.
	Services []ServiceInfo
	// Status is the body of a ServiceStatus response.
	Status *ServiceStatus
	// Logs is the body of a ServiceLogs response.
	Logs []string
	// Service, VsockCID and VsockPort are the body of LogsStreamStarted.
	Service   string
	VsockCID  uint32
	VsockPort uint32
	// Processes is the body of a ProcessList response.
	Processes []ProcessInfo
	// Process is the body of a ProcessStatus response.
	Process *ProcessInfo
	// PID is set by ProcessStarted.
	PID int
	// System is the body of a SystemStatus response.
	System *SystemStatus
	// Line and Missed are the body of a LogLine event.
	Line   string
	Missed uint64
}

// Errorf builds an Error response.
func Errorf(format string, args ...any) Response {
	return Response{Kind: KindError, Message: fmt.Sprintf(format, args...)}
}

// Success builds a Success response.
func Success(msg string) Response { return Response{Kind: KindSuccess, Message: msg} }

type msgBody struct {
	Message string `json:"message"`
}
type serviceListBody struct {
	Services []ServiceInfo `json:"services"`
}
type serviceStatusBody struct {
	Status *ServiceStatus `json:"status"`
}
type logsBody struct {
	Logs []string `json:"logs"`
}
type streamStartedBody struct {
	Service   string `json:"service"`
	VsockCID  uint32 `json:"vsock_cid"`
	VsockPort uint32 `json:"vsock_port"`
}
type processListBody struct {
	Processes []ProcessInfo `json:"processes"`
}
type processStatusBody struct {
	Process *ProcessInfo `json:"process"`
}
type processStartedBody struct {
	PID     int    `json:"pid"`
	Message string `json:"message"`
}
type systemStatusBody struct {
	Status *SystemStatus `json:"status"`
}
type logLineBody struct {
	Line   string `json:"line"`
	Missed uint64 `json:"missed"`
}

// MarshalJSON encodes r in the externally tagged shape.
func (r Response) MarshalJSON() ([]byte, error) {
	var body any
	switch r.Kind {
	case KindPong:
		return json.Marshal(r.Kind)
	case KindSuccess, KindError:
		body = msgBody{r.Message}
	case KindServiceList:
		body = serviceListBody{nonNilSlice(r.Services)}
	case KindServiceStatus:
		body = serviceStatusBody{r.Status}
	case KindServiceLogs:
		body = logsBody{nonNil(r.Logs)}
	case KindLogsStreamStarted:
		body = streamStartedBody{r.Service, r.VsockCID, r.VsockPort}
	case KindProcessList:
		body = processListBody{nonNilSlice(r.Processes)}
	case KindProcessStatus:
		body = processStatusBody{r.Process}
	case KindProcessStarted:
		body = processStartedBody{r.PID, r.Message}
	case KindSystemStatus:
		body = systemStatusBody{r.System}
	case KindLogLine:
		body = logLineBody{r.Line, r.Missed}
	default:
		return nil, fmt.Errorf("unknown response variant %q", r.Kind)
	}
	return tagged(r.Kind, body)
}

// UnmarshalJSON decodes an externally tagged response.
func (r *Response) UnmarshalJSON(data []byte) error {
	kind, body, err := splitVariant(data)
	if err != nil {
		return err
	}
	*r = Response{Kind: kind}
	if kind == KindPong {
		return nil
	}
	if body == nil {
		return fmt.Errorf("response %s needs a body", kind)
	}
	if !responseKinds[kind] {
		return fmt.Errorf("unknown response variant %q (is initctl older than init?)", kind)
	}
	// Every variant's body keys are distinct but for "status", which two
	// variants use with different types: decode the union once, and that
	// one key per variant.
	var u struct {
		Message   string          `json:"message"`
		Services  []ServiceInfo   `json:"services"`
		Status    json.RawMessage `json:"status"`
		Logs      []string        `json:"logs"`
		Service   string          `json:"service"`
		VsockCID  uint32          `json:"vsock_cid"`
		VsockPort uint32          `json:"vsock_port"`
		Processes []ProcessInfo   `json:"processes"`
		Process   *ProcessInfo    `json:"process"`
		PID       int             `json:"pid"`
		Line      string          `json:"line"`
		Missed    uint64          `json:"missed"`
	}
	if err := json.Unmarshal(body, &u); err != nil {
		return fmt.Errorf("response %s: %w", kind, err)
	}
	r.Message, r.Services, r.Logs, r.Processes, r.Process = u.Message, u.Services, u.Logs, u.Processes, u.Process
	r.Service, r.VsockCID, r.VsockPort, r.PID, r.Line, r.Missed = u.Service, u.VsockCID, u.VsockPort, u.PID, u.Line, u.Missed
	if u.Status != nil && !isNull(u.Status) {
		var err error
		switch kind {
		case KindServiceStatus:
			err = json.Unmarshal(u.Status, &r.Status)
		case KindSystemStatus:
			err = json.Unmarshal(u.Status, &r.System)
		}
		if err != nil {
			return fmt.Errorf("response %s: status: %w", kind, err)
		}
	}
	return nil
}

// responseKinds are the response variants this codec knows.
var responseKinds = map[string]bool{
	KindPong: true, KindSuccess: true, KindError: true, KindServiceList: true, KindServiceStatus: true,
	KindServiceLogs: true, KindLogsStreamStarted: true, KindProcessList: true, KindProcessStatus: true,
	KindProcessStarted: true, KindSystemStatus: true, KindLogLine: true,
}

// splitVariant returns the variant name and body of an externally tagged
// value: a bare string (body nil) or an object with exactly one key.
func splitVariant(data []byte) (string, json.RawMessage, error) {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return "", nil, err
		}
		return s, nil, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return "", nil, fmt.Errorf("want a variant name or a single-key object: %w", err)
	}
	if len(m) != 1 {
		return "", nil, fmt.Errorf("want an object with exactly one key (the variant), got %d keys", len(m))
	}
	for k, v := range m {
		return k, v, nil
	}
	panic("unreachable")
}

func isNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

// nonNil makes empty lists encode as [] rather than null, as the reference
// (serde Vec) always does.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func nonNilSlice[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
