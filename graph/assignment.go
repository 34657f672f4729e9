package graph

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/reprocessor/reprocessor/worker"
)

// betaStates maps beta's PascalCase assignmentState values to v1.0's (worker.State*, the
// one list of the enum).
var betaStates = map[string]string{
	"Delivering":         worker.StateDelivering,
	"PartiallyDelivered": worker.StatePartiallyDelivered,
	"Delivered":          worker.StateDelivered,
	"Expired":            worker.StateExpired,
	"DeliveryFailed":     worker.StateDeliveryFailed,
	"UnknownFutureValue": worker.StateUnknownFutureValue,
}

// betaState returns beta's PascalCase for a v1.0 state, or the state as given.
func betaState(v1 string) string {
	for beta, v := range betaStates {
		if v == v1 {
			return beta
		}
	}
	return v1
}

// Assignment is an access package assignment as read from Graph.
type Assignment struct {
	ID     string
	State  string // in v1.0's camelCase ("delivered") whatever the API version; unknown values as sent
	Status string // free text
	// Read with $expand (v1.0): the target, the access package's id, and when the
	// assignment's schedule starts (zero when not answered).
	Target          Target
	AccessPackageID string
	StartDateTime   time.Time
}

// wireAssignment holds both versions' property names.
type wireAssignment struct {
	ID               string `json:"id"`
	State            string `json:"state"`
	Status           string `json:"status"`
	AssignmentState  string `json:"assignmentState"`
	AssignmentStatus string `json:"assignmentStatus"`
	Schedule         *struct {
		StartDateTime string `json:"startDateTime"`
	} `json:"schedule"`
	Target *struct {
		ObjectID      string `json:"objectId"`
		PrincipalName string `json:"principalName"`
		DisplayName   string `json:"displayName"`
		SubjectType   string `json:"subjectType"`
	} `json:"target"`
	AccessPackage *struct {
		ID string `json:"id"`
	} `json:"accessPackage"`
}

func (w wireAssignment) assignment(beta bool) Assignment {
	if !beta {
		a := Assignment{ID: w.ID, State: canonicalState(w.State), Status: w.Status}
		if w.Schedule != nil {
			a.StartDateTime = parseTime(w.Schedule.StartDateTime)
		}
		if w.Target != nil {
			a.Target = Target{ObjectID: strings.ToLower(w.Target.ObjectID), PrincipalName: w.Target.PrincipalName,
				DisplayName: w.Target.DisplayName, SubjectType: w.Target.SubjectType}
		}
		if w.AccessPackage != nil {
			a.AccessPackageID = strings.ToLower(w.AccessPackage.ID)
		}
		return a
	}
	return Assignment{ID: w.ID, State: canonicalState(w.AssignmentState), Status: w.AssignmentStatus}
}

// canonicalState returns a known state in v1.0's camelCase whatever its case (beta sends
// "Delivered", and a state is not worth failing over its case); any other value as sent.
func canonicalState(s string) string {
	for _, v := range betaStates {
		if strings.EqualFold(s, v) {
			return v
		}
	}
	return s
}

// Page is one page of a list of assignments.
type Page struct {
	Assignments []Assignment
	NextLink    string // @odata.nextLink; empty on the last page
}

type wirePage struct {
	Value    []wireAssignment `json:"value"`
	NextLink string           `json:"@odata.nextLink"`
}

func decodeAssignment(body []byte, beta bool) (Assignment, error) {
	var w wireAssignment
	if err := json.Unmarshal(body, &w); err != nil {
		return Assignment{}, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return w.assignment(beta), nil
}

func decodePage(body []byte, beta bool) (Page, error) {
	var w wirePage
	if err := json.Unmarshal(body, &w); err != nil {
		return Page{}, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	p := Page{NextLink: w.NextLink, Assignments: make([]Assignment, len(w.Value))}
	for i, a := range w.Value {
		p.Assignments[i] = a.assignment(beta)
	}
	return p, nil
}
