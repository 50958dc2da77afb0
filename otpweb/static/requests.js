// Keeps the emergency requests table current: every 2 s it asks
// /requests/live for the waiting requests and rebuilds the rows with DOM
// methods and textContent only (the data is never parsed as HTML). The
// forms it makes carry the page's CSRF token from <meta name="csrf">.
(function () {
  "use strict";
  var body = document.getElementById("requests-body");
  var status = document.getElementById("live-status");
  var meta = document.querySelector('meta[name="csrf"]');
  if (!body || !meta || !window.fetch) {
    return;
  }
  var csrf = meta.getAttribute("content") || "";
  var columns = [
    ["id", "No."],
    ["user", "User"],
    ["machine", "Host"],
    ["address", "Address"],
    ["reason", "Reason"],
    ["origin", "Origin"],
    ["created", "Asked (UTC)"]
  ];
  var shown = null;
  var timer = null;

  function say(text) {
    if (status && status.textContent !== text) {
      status.textContent = text;
    }
  }

  function cell(label, text) {
    var td = document.createElement("td");
    td.setAttribute("data-label", label);
    td.textContent = text;
    return td;
  }

  function decisionForm(request, decision, label, className) {
    var form = document.createElement("form");
    form.className = "inline";
    form.method = "post";
    form.action = "/requests/" + encodeURIComponent(String(request.id)) + "/" + decision;
    var token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrf";
    token.value = csrf;
    form.appendChild(token);
    var button = document.createElement("button");
    button.type = "submit";
    button.textContent = label;
    if (className) {
      button.className = className;
    }
    button.setAttribute("aria-label", label + " request " + request.id + " of " + request.user);
    form.appendChild(button);
    return form;
  }

  function row(request) {
    var tr = document.createElement("tr");
    columns.forEach(function (column) {
      tr.appendChild(cell(column[1], String(request[column[0]] === undefined ? "" : request[column[0]])));
    });
    var actions = cell("Decision", "");
    actions.appendChild(decisionForm(request, "approve", "Approve", ""));
    actions.appendChild(decisionForm(request, "deny", "Deny", "danger"));
    tr.appendChild(actions);
    return tr;
  }

  function render(requests) {
    var rows = requests.map(row);
    if (rows.length === 0) {
      var tr = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = columns.length + 1;
      td.textContent = "No requests are waiting.";
      tr.appendChild(td);
      rows.push(tr);
    }
    while (body.firstChild) {
      body.removeChild(body.firstChild);
    }
    rows.forEach(function (r) {
      body.appendChild(r);
    });
  }

  // The rows the server drew: the same requests need no rebuild.
  function sameIds(requests) {
    var drawn = [];
    Array.prototype.forEach.call(body.rows, function (tr) {
      if (tr.cells.length > 1) {
        drawn.push(tr.cells[0].textContent);
      }
    });
    return drawn.join(",") === requests.map(function (r) { return String(r.id); }).join(",");
  }

  function stop(text) {
    say(text);
    if (timer !== null) {
      window.clearInterval(timer);
      timer = null;
    }
  }

  function poll() {
    if (document.hidden) {
      return;
    }
    fetch("/requests/live", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().then(function (data) {
          return { status: response.status, data: data };
        });
      })
      .then(function (answer) {
        if (answer.status === 401 || answer.status === 403) {
          stop(answer.data && answer.data.error ? String(answer.data.error) : "Reload the page.");
          return;
        }
        if (answer.status !== 200 || !answer.data || !Array.isArray(answer.data.requests)) {
          say("The list could not be refreshed; trying again.");
          return;
        }
        say("");
        // Rebuild only on a change, so keyboard focus stays put otherwise.
        var key = JSON.stringify(answer.data.requests);
        if (shown === null && sameIds(answer.data.requests)) {
          shown = key;
        }
        if (key !== shown) {
          shown = key;
          render(answer.data.requests);
        }
      })
      .catch(function () {
        say("The list could not be refreshed; trying again.");
      });
  }

  timer = window.setInterval(poll, 2000);
})();
