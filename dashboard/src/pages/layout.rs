//! The page shell: navigation, the live-refresh control, styles and the little script.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::auth::Caller;

const CSS: &str = r#"
*{box-sizing:border-box}body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{display:flex;gap:1rem;align-items:center;background:#1d2330;color:#fff;padding:.5rem 1rem;flex-wrap:wrap}
header a{color:#cfd6e4;text-decoration:none}header a.on{color:#fff;font-weight:600}header .me{margin-left:auto}
header form{display:inline}header button{background:none;border:1px solid #58627a;color:#cfd6e4;border-radius:3px}
main{padding:1rem}h1{font-size:1.3rem;margin:.2rem 0 .8rem}h2{font-size:1.05rem;margin:1.2rem 0 .5rem}
table{border-collapse:collapse;background:#fff;width:100%}th,td{border-bottom:1px solid #e3e6ec;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}pre{background:#fff;border:1px solid #e3e6ec;padding:.5rem;overflow:auto;max-height:24rem;margin:0}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{background:#fff;border:1px solid #e3e6ec;border-radius:4px;padding:.6rem .8rem;min-width:14rem}
.state{display:inline-block;padding:0 .4rem;border-radius:3px;background:#e3e6ec;font-size:12px}
.s-completed,.s-done,.s-ok{background:#d4f0dc}.s-discarded,.s-failed,.s-compensation_failed,.s-cancelled{background:#f8d7da}
.s-running,.s-available{background:#d6e6fb}.s-compensating,.s-retryable,.s-completed_with_errors{background:#fde9c4}.s-compensated,.s-skipped{background:#e6e0f5}
.error{color:#a11d2b;white-space:pre-wrap}.muted{color:#6b7385}.alert{border-left:4px solid #d9534f}
form.inline{display:inline}button{cursor:pointer;padding:.2rem .6rem}button.danger{color:#a11d2b}
.filters{display:flex;gap:.5rem;flex-wrap:wrap;align-items:end;margin-bottom:.6rem}.filters label{display:flex;flex-direction:column;font-size:12px}
.login{max-width:22rem;margin:4rem auto;background:#fff;padding:1.5rem;border:1px solid #e3e6ec;display:flex;flex-direction:column;gap:.6rem}
.login label{display:flex;flex-direction:column}.live{font-size:12px;color:#cfd6e4}.live select{font-size:12px}
svg{background:#fff;border:1px solid #e3e6ec}
"#;

const SCRIPT: &str = r#"
(function(){
  var sel=document.getElementById('rate');if(!sel)return;
  var key='onboard.refresh',rate=parseInt(localStorage.getItem(key)||'2000',10),timer=null;
  sel.value=String(rate);
  sel.addEventListener('change',function(){rate=parseInt(sel.value,10);localStorage.setItem(key,String(rate));schedule();});
  function schedule(){clearTimeout(timer);if(rate>0)timer=setTimeout(tick,rate);}
  function editing(cur){var a=document.activeElement;return a&&cur.contains(a)&&/^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)&&a.type!=='checkbox';}
  function tick(){
    if(document.hidden||rate===0){schedule();return;}
    fetch(location.href,{headers:{'X-Live':'1'},credentials:'same-origin'}).then(function(r){
      if(r.redirected&&r.url.indexOf('/login')>=0){location.href=r.url;return null;}
      return r.ok?r.text():null;
    }).then(function(text){
      if(text){
        var doc=new DOMParser().parseFromString(text,'text/html');
        var fresh=doc.getElementById('live'),cur=document.getElementById('live');
        if(fresh&&cur&&!editing(cur)){
          var checked=Array.prototype.map.call(cur.querySelectorAll('input[type=checkbox]:checked'),function(c){return c.value;});
          var open=Array.prototype.map.call(cur.querySelectorAll('details[open]'),function(d){return d.id;});
          cur.replaceWith(fresh);
          checked.forEach(function(v){var c=fresh.querySelector('input[type=checkbox][value="'+v+'"]');if(c)c.checked=true;});
          open.forEach(function(id){var d=id&&document.getElementById(id);if(d)d.open=true;});
        }
        var u=document.getElementById('updated');if(u)u.textContent=new Date().toLocaleTimeString();
      }
      schedule();
    }).catch(function(){schedule();});
  }
  document.addEventListener('visibilitychange',function(){if(!document.hidden){clearTimeout(timer);tick();}else{clearTimeout(timer);}});
  schedule();
})();
"#;

const NAV: [(&str, &str); 8] = [
    ("/", "Overview"),
    ("/jobs", "Jobs"),
    ("/queues", "Queues"),
    ("/onboardings", "Onboardings"),
    ("/inbox", "Webhook inbox"),
    ("/workers", "Workers"),
    ("/audit", "Audit"),
    ("/api/me", "API"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · onboard" }
            style { (PreEscaped(CSS)) }
        }
    }
}

/// A page without navigation (login).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main { (body) } }
        }
    }
}

/// A page: navigation, who is logged in, the refresh control, and `live` (the part that refreshes).
pub fn page(caller: &Caller, active: &str, title: &str, fixed: Markup, live: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    strong { "onboard" }
                    @for (href, label) in NAV {
                        a href=(href) class=@if href == active { "on" } { (label) }
                    }
                    span.live {
                        "refresh "
                        select #rate title="Live refresh (pauses while the tab is hidden)" {
                            option value="1000" { "1 s" }
                            option value="2000" { "2 s" }
                            option value="5000" { "5 s" }
                            option value="15000" { "15 s" }
                            option value="0" { "off" }
                        }
                        " · " span #updated { "" }
                    }
                    span.me {
                        (caller.identity.name) " (" (caller.identity.role.as_str()) ") "
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(caller.csrf());
                            button #logout type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (fixed)
                    div #live { (live) }
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// A state as a coloured label.
pub fn state(state: &str) -> Markup {
    html! { span class={ "state s-" (state) } { (state) } }
}

/// A POST button for an action, with the CSRF token and where to come back to.
pub fn action(caller: &Caller, url: &str, label: &str, back: &str, danger: bool) -> Markup {
    html! {
        form.inline method="post" action=(url) {
            input type="hidden" name="csrf" value=(caller.csrf());
            input type="hidden" name="back" value=(back);
            button type="submit" data-action=(label) class=[danger.then_some("danger")] { (label) }
        }
    }
}

/// A timestamp, short.
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A timestamp that may be absent.
pub fn time_opt(t: Option<&chrono::DateTime<chrono::Utc>>) -> String {
    t.map(time).unwrap_or_default()
}
