# Chart for bench/results/latest.png; scripts/bench fills in @DAT@, @PNG@, @TITLE@, @XMAX@, @WIDTH@.
# Data columns: name ka_rps newconn_rps p50_ms p99_ms peak_rss_mib cpu_s_per_10k idle_rss_mib per_conn_kib colour
# (colour: the contender's linetype, fixed per name; @XMAX@: number of contenders - 0.4;
# @WIDTH@: 1750 px for the five contenders, wider with atlasgate-base;
# linetypes: 1 direct, 2 atlasgate, 3 nginx, 4 haproxy, 5 mitmproxy, 6 atlasgate-base)
set terminal pngcairo size @WIDTH@,900 font "DejaVu Sans,11" noenhanced
set output "@PNG@"
set datafile missing "NaN"
set style fill solid 0.85 border -1
set boxwidth 0.6
set grid ytics lc rgb "#dddddd"
set xrange [-0.6:@XMAX@]
set yrange [0:*]
set offsets 0, 0, graph 0.15, 0
set key off
set linetype 1 lc rgb "#7f7f7f"
set linetype 2 lc rgb "#2e7d32"
set linetype 3 lc rgb "#1565c0"
set linetype 4 lc rgb "#6a1b9a"
set linetype 5 lc rgb "#ef6c00"
set linetype 6 lc rgb "#81c784"
lbl(v, f) = (v == v) ? sprintf(f, v) : "n/a"
set multiplot layout 2,3 title "@TITLE@"

set title "keep-alive requests/s (higher is better)"
plot "@DAT@" every ::1 using 0:2:10:xtic(1) with boxes lc variable, \
     "" every ::1 using 0:2:(lbl($2, "%.0f")) with labels offset 0,0.8

set title "new TLS connections/s, 1 request each (higher is better)"
plot "@DAT@" every ::1 using 0:3:10:xtic(1) with boxes lc variable, \
     "" every ::1 using 0:3:(lbl($3, "%.0f")) with labels offset 0,0.8

set title "keep-alive latency, ms, log (p50 dark | p99 light)"
set logscale y
set yrange [*:*]
set offsets 0, 0, graph 0.12, 0
set boxwidth 0.35
plot "@DAT@" every ::1 using ($0-0.18):4:10:xtic(1) with boxes lc variable, \
     "" every ::1 using ($0+0.18):5:10 with boxes lc variable fs transparent solid 0.35, \
     "" every ::1 using ($0-0.18):4:(lbl($4, "%.2f")) with labels offset -0.6,0.8, \
     "" every ::1 using ($0+0.18):5:(lbl($5, "%.2f")) with labels offset 0.6,0.8
unset logscale y
set yrange [0:*]
set offsets 0, 0, graph 0.15, 0
set boxwidth 0.6

set title "proxy peak RSS under load, MiB (VmHWM)"
plot "@DAT@" every ::1 using 0:6:10:xtic(1) with boxes lc variable, \
     "" every ::1 using 0:6:(lbl($6, "%.1f")) with labels offset 0,0.8

set title "proxy CPU s per 10,000 keep-alive requests (log)"
set logscale y
set yrange [0.05:*]
set offsets 0, 0, graph 0.12, 0
plot "@DAT@" every ::1 using 0:7:10:xtic(1) with boxes lc variable, \
     "" every ::1 using 0:7:(lbl($7, "%.2f")) with labels offset 0,0.8
unset logscale y
set yrange [0:*]
set offsets 0, 0, graph 0.15, 0

set title "proxy RSS per idle agent TLS connection, KiB"
plot "@DAT@" every ::1 using 0:9:10:xtic(1) with boxes lc variable, \
     "" every ::1 using 0:9:(lbl($9, "%.1f")) with labels offset 0,0.8
unset multiplot
