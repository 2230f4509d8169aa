// RQ Worker Pool form: the group's last hour as a chart and its scale decisions, refreshed every 5 s.
const RQ_WORKER_POOL_FORM_REFRESH_MS = 5000;

frappe.ui.form.on("RQ Worker Pool", {
	refresh(frm) {
		frm.disable_form(); // nothing here is editable: the pool owns its state
		const history = JSON.parse(frm.doc.history_json || "{}");
		rq_worker_pool_draw_chart(frm, history.chart);
		rq_worker_pool_draw_decisions(frm, history.decisions || []);
		rq_worker_pool_keep_fresh(frm);
	},
});

function rq_worker_pool_time(t) {
	const zone = frappe.boot.time_zone && frappe.boot.time_zone.system;
	const when = zone ? moment.unix(t).tz(zone) : moment.unix(t);
	return when.format("HH:mm:ss");
}

function rq_worker_pool_draw_chart(frm, chart) {
	const $wrapper = frm.get_field("chart_html").$wrapper.empty();
	if (!chart || !chart.t.length) {
		$wrapper.html(`<p class="text-muted">${__("No history published in the last hour.")}</p>`);
		return;
	}
	$wrapper.append(
		`<p class="text-muted small">${__(
			"Workers, busy workers and queued jobs (the busiest moment of each step); red bars: a scale decision, its height the new target. Refreshes every 5 s."
		)}</p>`
	);
	const el = $("<div class='rq-worker-pool-chart'>").appendTo($wrapper)[0];
	new frappe.Chart(el, {
		type: "axis-mixed",
		height: 280,
		data: {
			labels: chart.t.map(rq_worker_pool_time),
			datasets: [
				{ name: __("Decision (new target)"), chartType: "bar", values: chart.decided.map((v) => v || 0) },
				{ name: __("Workers"), chartType: "line", values: chart.workers },
				{ name: __("Busy workers"), chartType: "line", values: chart.busy },
				{ name: __("Queued jobs"), chartType: "line", values: chart.queued },
			],
		},
		colors: ["red", "blue", "orange", "grey"],
		axisOptions: { xIsSeries: 1, xAxisMode: "tick" },
		lineOptions: { hideDots: 1 },
		barOptions: { spaceRatio: 0.1 },
	});
}

function rq_worker_pool_draw_decisions(frm, decisions) {
	const $wrapper = frm.get_field("decisions_html").$wrapper.empty();
	if (!decisions.length) {
		$wrapper.html(`<p class="text-muted">${__("No scale-up or scale-down in the last hour.")}</p>`);
		return;
	}
	const shown = decisions.slice(0, 100);
	const cell = (v) => `<td>${frappe.utils.escape_html(v === null || v === undefined ? "-" : String(v))}</td>`;
	const rows = shown.map(
		(d) =>
			"<tr>" +
			cell(rq_worker_pool_time(d.t)) +
			cell(d.action) +
			cell(d.target) +
			cell(d.workers) +
			cell(d.busy) +
			cell(d.utilization === null ? null : `${Math.round(d.utilization * 100)}%`) +
			cell(d.queued) +
			cell(d.reason) +
			"</tr>"
	);
	const heads = [__("Time"), __("Decision"), __("Target"), __("Workers"), __("Busy"), __("Utilization"),
		__("Queued"), __("Reason")];
	$wrapper.html(`
		<table class="table table-bordered table-sm small">
			<thead><tr>${heads.map((h) => `<th>${h}</th>`).join("")}</tr></thead>
			<tbody>${rows.join("")}</tbody>
		</table>
		${decisions.length > shown.length
			? `<p class="text-muted small">${__("The {0} latest of {1}.", [shown.length, decisions.length])}</p>`
			: ""}
	`);
}

// One timer per form object. Frappe reuses that object for every pool's form, so the timer reloads
// whichever pool the form shows at its tick (a timer that kept the first pool's name stopped when
// another pool's form opened within 5 s, and nothing started a new one).
function rq_worker_pool_keep_fresh(frm) {
	if (frm.rq_worker_pool_timer) return;
	frm.rq_worker_pool_timer = setInterval(() => {
		const route = frappe.get_route() || [];
		const name = frm.doc && frm.doc.name;
		if (route[0] !== "Form" || route[1] !== "RQ Worker Pool" || route[2] !== name) {
			clearInterval(frm.rq_worker_pool_timer);
			frm.rq_worker_pool_timer = null;
			return;
		}
		// A pool that stopped is gone from the list: say so instead of failing to reload.
		frappe.db.exists("RQ Worker Pool", name).then((exists) => {
			if (exists) {
				frm.reload_doc();
			} else {
				clearInterval(frm.rq_worker_pool_timer);
				frm.rq_worker_pool_timer = null;
				frm.dashboard.set_headline(__("This pool no longer publishes its state (it stopped)."), "red");
			}
		});
	}, RQ_WORKER_POOL_FORM_REFRESH_MS);
}
