package bench

import (
	"math"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		v    []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.v); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.v, got, c.want)
		}
	}
}

// TestConvergence: the steady rate is the second half's, and 0.9·R is reached at the first
// moment the trailing 2 s held 0.9·R·2 accepted events.
func TestConvergence(t *testing.T) {
	t.Parallel()
	const sec = int64(time.Second)
	var at []int64
	// 10/s for the first 5 s, then 100/s until 10 s.
	for i := range 50 {
		at = append(at, int64(i)*sec/10)
	}
	for i := range 500 {
		at = append(at, 5*sec+int64(i)*sec/100)
	}
	steady, to90 := convergence(at, 0, 10*sec, 100)
	if math.Abs(steady-100) > 1 {
		t.Errorf("steady %v/s, want 100", steady)
	}
	// 180 events within 2 s: at 10/s then 100/s that is first true at about 6.8 s.
	if to90 < 6.7 || to90 > 6.9 {
		t.Errorf("0.9·R reached at %vs, want about 6.8", to90)
	}
	if _, to90 := convergence(at[:50], 0, 10*sec, 100); to90 != -1 {
		t.Errorf("0.9·R reached at %v by a run that never went past a tenth of R", to90)
	}
}
