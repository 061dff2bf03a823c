# Syllable nuclei after N. H. de Jong and T. Wempe (2009), "Praat script to detect syllable nuclei and measure
# speech rate automatically", Behavior Research Methods 41(2), 385-390: this project's own rendering of the
# procedure the paper publishes (not the authors' script text), run on a selected Sound through parselmouth as the
# test-time reference for the service's streaming detector (service/analytics/prosody.py). Prints the count.
form Syllable nuclei
    real Silence_threshold_(dB) -25
    real Minimum_dip_(dB) 2
endform
sound = selected("Sound")
# intensity with a 50 Hz minimum pitch (a 64 ms window), the mean subtracted
intensity = To Intensity: 50, 0, "yes"
lowest = Get minimum: 0, 0, "Parabolic"
top = Get quantile: 0, 0, 0.99
threshold = top + silence_threshold
if threshold < lowest
    threshold = lowest
endif
# the peaks of the intensity contour above the threshold
matrix = Down to Matrix
contour = To Sound (slice): 1
extrema = To PointProcess (extrema): 1, "yes", "no", "Sinc70"
points = Get number of points
peaks = 0
for i to points
    selectObject: extrema
    t = Get time from index: i
    selectObject: contour
    value = Get value at time: t, "Cubic"
    if value > threshold
        peaks += 1
        peak_time[peaks] = t
        peak_value[peaks] = value
    endif
endfor
# a peak counts if the contour dips more than the minimum below it before the next peak, and is voiced
selectObject: sound
pitch = To Pitch (ac): 0.02, 30, 4, "no", 0.03, 0.25, 0.01, 0.35, 0.25, 450
nuclei = 0
for p to peaks - 1
    selectObject: intensity
    dip = Get minimum: peak_time[p], peak_time[p + 1], "None"
    if abs (peak_value[p] - dip) > minimum_dip
        selectObject: pitch
        f0 = Get value at time: peak_time[p], "Hertz", "Linear"
        if f0 <> undefined
            nuclei += 1
        endif
    endif
endfor
removeObject: intensity, matrix, contour, extrema, pitch
writeInfoLine: nuclei
