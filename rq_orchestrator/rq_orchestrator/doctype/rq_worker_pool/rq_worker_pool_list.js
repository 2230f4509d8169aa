// RQ Worker Pool list: one row per group of every pool on the bench's Redis, refreshed every 5 s.
const RQ_WORKER_POOL_REFRESH_MS = 5000;

frappe.listview_settings["RQ Worker Pool"] = {
	formatters: {
		// The pool's own utilization, as a number (Frappe draws a Percent field as a bar alone).
		utilization(value) {
			return value === null || value === undefined ? "-" : `${Math.round(value)}%`;
		},
		// "up 5 (12s)": action, new target and age; the reason is in the tooltip and the form.
		last_decision(value) {
			const text = frappe.utils.escape_html(value || "-");
			const parts = text.match(/^(\w+) (\d+), (\S+) ago/);
			const short = parts ? `${parts[1]} ${parts[2]} (${parts[3]})` : text;
			return `<span class="ellipsis" title="${text}">${short}</span>`;
		},
	},

	hide_name_column: true, // host:pid:group, cut to nothing useful; the row opens the form

	get_indicator(doc) {
		const colors = { ok: "green", stopping: "orange", stale: "red" };
		return [__(doc.state), colors[doc.state] || "gray", `state,=,${doc.state}`];
	},

	onload(listview) {
		// Room for every column (pool, state, workers, target, busy, utilization, wait, decision)
		// unless the site set its own number in List View Settings.
		if (!listview.list_view_settings.total_fields) {
			listview.list_view_settings.total_fields = 9;
			listview.setup_columns();
			listview.render_header(true);
		}
		// The sidebar's filters (assigned to, created by, tags) mean nothing here: give its room to
		// the columns (the toolbar's sidebar button brings it back).
		listview.page.sidebar.hide();
		listview.page.update_sidebar_icon && listview.page.update_sidebar_icon();
		rq_worker_pool_note_refusals(listview);
		// Virtual doctypes get no realtime list updates: poll while the list is on screen (not while
		// it shows filters the server refused: it said why once, in a message, not again every 5 s).
		setInterval(() => {
			if (listview.list_view_settings.disable_auto_refresh) return;
			const route = frappe.get_route() || [];
			if (route[0] !== "List" || route[1] !== "RQ Worker Pool") return;
			if (listview.rq_worker_pool_refused === rq_worker_pool_filters(listview)) return;
			listview.refresh();
		}, RQ_WORKER_POOL_REFRESH_MS);
	},

	refresh(listview) {
		listview.rq_worker_pool_refused = null;
		const filtered = JSON.parse(rq_worker_pool_filters(listview)).length > 0;
		rq_worker_pool_no_result(
			listview,
			filtered
				? __("No group of a pool matches these filters.")
				: __("No worker pool publishes on this bench's Redis. Start one with `bench worker-pool`.")
		);
	},
};

function rq_worker_pool_filters(listview) {
	return JSON.stringify((listview.filter_area && listview.filter_area.get()) || []);
}

function rq_worker_pool_no_result(listview, message) {
	listview.$no_result.html(`<div class="no-result text-muted flex justify-center align-center">${message}</div>`);
}

// A filter the list cannot apply (e.g. "Descendants Of") is refused by the server with a message (HTTP 417).
// Frappe then leaves the rows from before the filter under it and its count on "Refreshing..." for good:
// show no rows and say why instead, until the filters change.
function rq_worker_pool_note_refusals(listview) {
	const refresh = listview.refresh.bind(listview);
	listview.refresh = () => {
		const filters = rq_worker_pool_filters(listview);
		return Promise.resolve(refresh()).catch((xhr) => {
			if (!xhr || xhr.status !== 417) return; // not a refusal (Redis or the network): the next poll retries
			listview.rq_worker_pool_refused = filters;
			listview.data = [];
			listview.toggle_result_area();
			rq_worker_pool_no_result(
				listview,
				__("This list cannot apply these filters (the message said why): change or remove them.")
			);
		});
	};
}
