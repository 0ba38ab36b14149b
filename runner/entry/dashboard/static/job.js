// A job's page: the record panel (live until the job has finished), its actions (cancel,
// re-run, copy a pushed reference) and the log, streamed from the first line.
import { api, notice, onSignedIn, replaceContent, streamEvents } from "./common.js";
import { LogView } from "./logview.js";

const jobId = document.getElementById("job").dataset.job;
const record = document.getElementById("record");
const followBox = document.getElementById("follow");
const logElement = document.getElementById("log");
const count = document.getElementById("log-count");
const logState = document.getElementById("log-state");

function setLogState(state, text) {
  logElement.dataset.state = state;
  logState.textContent = text;
}

async function copy(button) {
  const value = button.dataset.copy;
  try {
    await navigator.clipboard.writeText(value);
  } catch {
    const area = document.createElement("textarea");  // no clipboard API (plain http on another host)
    area.value = value;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  button.dataset.copied = "1";
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}

async function cancel(button) {
  button.disabled = true;
  try {
    await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
    notice("Cancel requested: the job stops within a second or two.");
  } catch (error) {
    notice(`Cancel failed: ${error.message}`, "error");
    button.disabled = false;
  }
}

async function rerun(button) {
  button.disabled = true;
  try {
    const answer = await (await api(`/ui/jobs/${encodeURIComponent(jobId)}/rerun`, { method: "POST" })).json();
    location.assign(`/jobs/${encodeURIComponent(answer.id)}`);
  } catch (error) {
    notice(`Re-run failed: ${error.message}`, "error");
    button.disabled = false;
  }
}

record.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button || button.disabled) return;
  if (button.classList.contains("copy")) copy(button);
  else if (button.id === "cancel") cancel(button);
  else if (button.id === "rerun") rerun(button);
  else if (button.id === "provenance") save(`/v1/jobs/${encodeURIComponent(jobId)}/provenance`, `${jobId}.provenance.json`);
});

// Fetch `path` with the tab's token and save it as `name` (a plain link could not send the token).
async function save(path, name) {
  try {
    const blob = await (await api(path)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    notice(`Download failed: ${error.message}`, "error");
  }
}

function download() {
  return save(`/v1/jobs/${encodeURIComponent(jobId)}/logs`, `${jobId}.log`);
}

function watchRecord() {
  streamEvents(() => `/ui/jobs/${encodeURIComponent(jobId)}/events`, {
    record: (data) => { replaceContent(record, data.html); },
    done: () => "stop",
    broken: () => notice("Live updates interrupted; reconnecting…", "error"),
    failed: (error) => { record.textContent = error.message; },
  });
}

function streamLog() {
  const view = new LogView(logElement, {
    follow: followBox.checked,
    onFollowChange: (on) => { followBox.checked = on; },
  });
  window.runnerLog = view;  // for the browser tests and the benchmark
  followBox.addEventListener("change", () => view.setFollow(followBox.checked));
  document.getElementById("collapse-all").addEventListener("click", () => view.setAll(true));
  document.getElementById("expand-all").addEventListener("click", () => view.setAll(false));
  document.getElementById("download").addEventListener("click", download);
  let after = "0-0";
  let shown = 0;
  const number = new Intl.NumberFormat();
  const showCount = () => { count.textContent = `${number.format(view.count)} lines`; };
  streamEvents(() => `/ui/jobs/${encodeURIComponent(jobId)}/log/events?after=${after}`, {
    open: () => setLogState("streaming", "live"),
    lines: (data, id) => {
      view.append(data.text, data.marks);
      if (id) after = id;
      if (view.count - shown > 5000 || data.lines < 5000) { shown = view.count; showCount(); }
    },
    end: (data) => {
      showCount();
      view.ended();
      setLogState("ended", data.status ? `complete (job ${data.status.replace("_", " ")})` : "complete");
      return "stop";
    },
    error: (data) => { setLogState("error", data.message); },
    broken: () => setLogState("error", "interrupted; reconnecting…"),
    failed: (error) => setLogState("error", error.message),
  });
}

onSignedIn(() => {
  watchRecord();
  streamLog();
});
