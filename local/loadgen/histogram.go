package loadgen

import (
	"math/bits"
	"time"
)

// subBits sets the histogram's resolution: each power of two is split
// into 2^subBits buckets, so a recorded value is off by at most 1/64
// (1.6%) of itself.
const subBits = 6

const (
	subCount = 1 << subBits
	// maxExp covers latencies up to 2^45 ns (about 9.8 hours).
	maxExp   = 45 - subBits
	nBuckets = (maxExp + 2) * subCount
)

// Histogram records durations in log-linear buckets: bounded memory,
// percentiles within 1.6%. The zero value is empty and ready to use. It is
// not safe for concurrent use: give each goroutine its own and Merge them.
type Histogram struct {
	counts   [nBuckets]uint64
	n        uint64
	sum      time.Duration
	min, max time.Duration
}

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < subCount {
		return int(v)
	}
	e := bits.Len64(v) - subBits - 1 // v is in [2^(e+subBits), 2^(e+subBits+1))
	if e > maxExp {
		return nBuckets - 1
	}
	return (e+1)*subCount + int(v>>e) - subCount
}

// upper is the largest duration that falls into bucket i.
func upper(i int) time.Duration {
	if i < subCount {
		return time.Duration(i)
	}
	e := i/subCount - 1
	sub := uint64(i%subCount + subCount)
	return time.Duration((sub+1)<<e - 1)
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	h.counts[bucketOf(d)]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.n++
	h.sum += d
}

// Merge adds every value recorded in o.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Mean is the average of the recorded values.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}

// Max is the largest recorded value.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile returns the value below which a fraction q (0..1) of the
// recorded values fall, rounded up to its bucket's upper edge and never
// above the largest recorded value.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(max(upper(i), h.min), h.max)
		}
	}
	return h.max
}
